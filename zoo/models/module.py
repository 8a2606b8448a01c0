"""Any torch ``nn.Module`` as a Bayesian model: ``zoo.bayesian(module)`` and ``zoo.register_module(name, builder)``.

The weights of the module's Linear, Conv and recurrent layers (or the ones named in ``sites=``) become latent
sites with N(0, prior_scale^2) priors; the network runs at each draw through ``torch.func.functional_call``
(and ``vmap`` over many draws). Everything else (norm layers, layers left out of ``sites=``) stays a point
estimate: svi trains it beside the guide, laplace and nuts hold it at its value (pretrained, or as initialised),
as laplace-torch's last-layer Laplace holds a feature extractor.

Modes. The module's own Dropout layers are always off: the posterior over weights is the uncertainty, and MC
dropout is the ``"mc-dropout"`` guide (masks on the input units of every weight matrix at the net's dropout
rate). Norm layers with running statistics follow the mode the module is handed in: in eval mode they use
their stored statistics everywhere (every backend); in train mode (a fresh module) svi trains them as PyTorch
does (batch statistics, running averages for prediction), and laplace and nuts are refused, since batch
statistics tie each point's likelihood to its batch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_median
from torch import nn

from .._card import ModelCard
from .._data import training_arrays
from .._errors import ZooError
from .._model import GENERIC_GUIDES, Defaults, Display, ZooModel
from .._registry import check_keywords, register_model
from .bnn import BATCHED_SAMPLER, FULL_LAPLACE_MAX, LAPLACE
from .cnn import check_labels
from .layers import observe, weight
from .likelihoods import RegressionLikelihood
from .network_model import NetworkModel
from .weight_guides import WeightSite, mc_dropout_guide, mean_field_guide

WEIGHTED = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.RNNBase)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
RUNNING_STATS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
SAMPLERS = ("laplace", "nuts", "chees", "pyro-nuts")
POINTS = "net"  # the point estimates' module in the param store: net$$$<parameter path>


@dataclass(frozen=True, eq=False)
class ModuleWeight(WeightSite):
    """A weight site that starts where the module's parameter was when it was handed over."""

    start: torch.Tensor | None = None

    def init(self, device) -> torch.Tensor:
        return self.start.to(device).clone()


class PointState(nn.Module):
    """The module's point estimates and buffers under flat names (the very tensors, shared): what svi trains
    with ``pyro.module``, what a fit starts from and what a posterior saves and loads."""

    def __init__(self, module: nn.Module, sampled: set[str]):
        super().__init__()
        for name, value in module.named_parameters():
            if name not in sampled:
                self.register_parameter(_flat(name), value)
        for name, value in module.named_buffers():
            self.register_buffer(_flat(name), value)


def _flat(name: str) -> str:
    return name.replace(".", "-")


class ModuleNet:
    """The Pyro model: priors on the chosen weights, the module at the drawn weights, the task's likelihood."""

    def __init__(self, module, sites, likelihood, prior_scale: float, train_norms: bool):
        self.module, self.sites, self.likelihood, self.prior_scale = module, sites, likelihood, prior_scale
        self.state = PointState(module, {site.name for site in sites})
        self.norms = [m for m in module.modules() if isinstance(m, RUNNING_STATS) and m.track_running_stats]
        self.train_norms = train_norms
        self.loop = any(isinstance(m, nn.RNNBase) for m in module.modules())  # no vmap rule for fused RNNs

    def __call__(self, x, y=None):
        weights = {s.name: weight(s.name, s.shape, self.prior_scale, x.device) for s in self.sites}
        scales = self.likelihood.sample_noise(x.device) if self.likelihood else None
        if any(p.requires_grad for p in self.state.parameters()):  # not while laplace or nuts hold them
            pyro.module(POINTS, self.state)
        with pyro.plate("data", x.shape[0]) as idx:
            out = self.forward(x[idx], weights)
            y = None if y is None else y[idx]
            return self.likelihood.observe(out, y, scales) if self.likelihood else observe(out, y)

    def forward(self, x, weights: dict) -> torch.Tensor:
        """The module at ``weights`` (each with any leading draw dims): (*draws, n, outputs)."""
        shapes = {s.name: s.shape for s in self.sites}
        lead = torch.broadcast_shapes(*(v.shape[:v.dim() - len(shapes[k])] for k, v in weights.items()))
        for norm in self.norms:
            norm.train(self.train_norms)
        if not lead:
            return self._call(weights, x)
        flat = {k: v.expand(*lead, *shapes[k]).reshape(-1, *shapes[k]) for k, v in weights.items()}
        with self._frozen_statistics():
            if self.loop:
                out = torch.stack([self._call({k: v[i] for k, v in flat.items()}, x) for i in range(math.prod(lead))])
            else:
                out = torch.func.vmap(lambda w: self._call(w, x))(flat)
        return out.reshape(*lead, *out.shape[1:])

    def _call(self, weights, x):
        out = torch.func.functional_call(self.module, weights, (x,))
        return out.unsqueeze(-1) if out.dim() == 1 else out

    @contextmanager
    def _frozen_statistics(self):
        """Many draws at once: batch statistics without updating the running ones (one update per draw would
        not be PyTorch's, and vmap cannot write a shared buffer)."""
        tracked = [m for m in self.norms if m.training]
        for m in tracked:
            m.track_running_stats = False
        try:
            yield
        finally:
            for m in tracked:
                m.track_running_stats = True


def _weight_sites(module: nn.Module, chosen, dropout: float) -> list[ModuleWeight]:
    """The latent weight sites: every parameter of the weighted layers, or of the layers/parameters ``chosen``."""
    layers = {name: m for name, m in module.named_modules() if isinstance(m, WEIGHTED)}
    params = dict(module.named_parameters())
    if chosen is None:
        names = [f"{layer}.{p}" if layer else p for layer, m in layers.items() for p, v in m.named_parameters()
                 if v.requires_grad]
    else:
        if isinstance(chosen, str):
            chosen = [chosen]
        modules = dict(module.named_modules())
        names = []
        for key in chosen:
            if key in params:
                names.append(key)
            elif key in modules and key:
                names += [f"{key}.{p}" for p in dict(modules[key].named_parameters())]
            else:
                raise ZooError(f"bayesian: sites= names {key!r}, which is neither a layer nor a parameter of the "
                               f"module; its weighted layers are {sorted(layers) or 'none'}")
    if not names:
        raise ZooError(f"bayesian: the module ({type(module).__name__}) has no trainable weights to put priors on "
                       f"(no Linear, Conv or recurrent layer with parameters); name them with sites=")
    sites = []
    for name in dict.fromkeys(names):
        value = params[name].detach()
        fan_in = math.prod(value.shape[1:]) if value.dim() > 1 else 1
        sites.append(ModuleWeight(name, tuple(value.shape), fan_in, dropout if value.dim() > 1 else 0.0,
                                  start=value.clone()))
    return sites


def _task(task, data) -> str:
    """The task: given, else from the type of the targets (integers: classification)."""
    if task not in (None, "regression", "classification"):
        raise ZooError(f"bayesian: task must be 'regression' or 'classification', got {task!r}")
    if task is None and data is None:
        raise ZooError("bayesian: give data= (the training data, to read the task and check the module "
                       "on it) or task='regression' / 'classification'")
    return task or ("regression" if training_arrays(data)[1].is_floating_point() else "classification")


def _outputs(module: nn.Module, x: torch.Tensor) -> int:
    """The module's outputs per point, from a run on two points of ``x`` (a clear error if it cannot run)."""
    try:
        with torch.no_grad():
            out = module.eval()(x[:2])
    except Exception as err:
        raise ZooError(f"bayesian: the module could not run on x of shape {tuple(x[:2].shape)} "
                       f"({type(err).__name__}: {err})") from None
    if not isinstance(out, torch.Tensor) or out.dim() not in (1, 2):
        raise ZooError("bayesian: the module must return a tensor (points, outputs); got "
                       f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out.shape[-1] if out.dim() == 2 else 1


class ModuleModel(NetworkModel):
    """A user's network as a zoo model: x is checked to run, y against the task and the output layer."""

    kind = "network"

    def __init__(self, net: ModuleNet, task: str, outputs: int | None, **kwargs):
        super().__init__(net, **kwargs)
        self.task, self.outputs = task, outputs
        self._predicting = copy.copy(net)
        self._predicting.train_norms = False

    @property
    def predictive(self):
        return self._predicting

    def refusal(self, backend):
        if backend in SAMPLERS and self.model.train_norms and self.model.norms:
            return ("the module is in train mode and has BatchNorm layers, whose batch statistics tie each "
                    "point's likelihood to its batch; hand it over in eval mode (module.eval(): its running "
                    "statistics, fixed) or use svi")
        return super().refusal(backend)

    def validate(self, args):
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() == 0:
            raise ZooError(f"{self.card.name}: expected data (x, y) with x a tensor (points, ...)")
        if self.outputs is None:
            self.outputs = _outputs(self.model.module, args[0])
        law = self.model.likelihood
        if law is not None and self.outputs != law.outputs:
            raise ZooError(f"{self.card.name}: a {law.kind!r} regression needs {law.outputs} output(s) per point; "
                           f"the module returns {self.outputs}")
        y = args[1] if len(args) > 1 else None
        if y is None:
            return
        if self.task == "classification":
            check_labels(self.card.name, y, self.outputs)
        elif not y.is_floating_point() or y.dim() != 1:
            raise ZooError(f"{self.card.name}: regression targets y must be 1-D floating point, got "
                           f"{y.dtype} of shape {tuple(y.shape)}")

    def fitted_state(self):
        return {f"{POINTS}$$${k}": v.detach().clone() for k, v in self.model.state.state_dict().items()}


def bayesian(module: nn.Module, data=None, prior_scale: float = 1.0, sites=None, *, task: str | None = None,
             likelihood: str = "normal", dropout: float | None = None) -> ZooModel:
    """Any torch ``nn.Module`` as a zoo model: priors on its weights, its output as the likelihood's.

    Parameters
    ----------
    module : torch.nn.Module
        Maps x (points, ...) to outputs (points, k): class logits, or one regression output (two for
        ``likelihood="heteroscedastic"``). A copy is taken; ``module`` itself is left as it is. Its mode
        decides its norm layers' statistics (see :mod:`zoo.models.module`).
    data : Split or tuple, optional
        Training data: sets the task (integer targets: classification) and checks the module runs on x.
    prior_scale : float
        The N(0, prior_scale^2) prior on every entry of the chosen weights.
    sites : list of str, optional
        Layers (``"fc"``) or parameters (``"fc.weight"``) to be Bayesian; default every Linear, Conv and
        recurrent layer. The last one listed is Laplace's ``subset="last-layer"``.
    task : {"regression", "classification"}, optional
        Without ``data``.
    likelihood : {"normal", "heteroscedastic", "student-t"}
        Of a regression (:mod:`zoo.models.likelihoods`).
    dropout : float, optional
        The ``"mc-dropout"`` guide's rate; default the largest rate of the module's Dropout layers (the guide
        is offered when there is one or when this is given).

    Examples
    --------
    >>> import torch, zoo
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(),
    ...                           torch.nn.Linear(16, 1))
    >>> x = torch.randn(64, 3); y = x.sum(-1) + 0.1 * torch.randn(64)
    >>> model = zoo.bayesian(net, data=(x, y))
    >>> post = zoo.fit(model, (x, y), num_steps=200, seed=0)
    >>> post.predict(x[:5]).mean.shape
    torch.Size([5])
    """
    if not isinstance(module, nn.Module):
        raise ZooError(f"bayesian: module must be a torch.nn.Module, got {type(module).__name__}")
    if not (isinstance(prior_scale, (int, float)) and prior_scale > 0):
        raise ZooError(f"bayesian: prior_scale must be a positive number, got {prior_scale!r}")
    train_norms = module.training
    module = copy.deepcopy(module)
    rates = [m.p for m in module.modules() if isinstance(m, DROPOUTS)]
    rates += [m.dropout for m in module.modules() if isinstance(m, nn.RNNBase)]
    dropout = max(rates, default=0.0) if dropout is None else dropout
    if not 0.0 <= dropout < 1.0:
        raise ZooError(f"bayesian: dropout must be in [0, 1), got {dropout}")
    task = _task(task, data)
    outputs = None if data is None else _outputs(module, training_arrays(data)[0])
    module.eval()  # dropout off for good; norm layers are set per call
    weight_sites = _weight_sites(module, sites, dropout)
    law = RegressionLikelihood(likelihood) if task == "regression" else None
    net = ModuleNet(module, weight_sites, law, float(prior_scale), train_norms)
    extra = law.noise_sites if law else {}
    starts = {s.name: s for s in weight_sites}

    def init_loc(site):
        return starts[site["name"]].init(site["fn"].mean.device) if site["name"] in starts else init_to_median(site)

    guides = {"mean-field": lambda zm, init_scale=1e-3: mean_field_guide("mean_field", weight_sites, init_scale,
                                                                         extra)}
    if dropout > 0:
        guides["mc-dropout"] = lambda zm, p=dropout: mc_dropout_guide(
            "mc_dropout", [replace(s, dropout=p if s.dropout else 0.0) for s in weight_sites], extra)
    last = weight_sites[-1].name.rpartition(".")[0]
    name = f"bayesian({type(module).__name__})"
    card = ModelCard(name=name, family="module", task=task,
                     likelihood="Categorical(logits=module(x))" if law is None else f"{likelihood}, f = module(x)",
                     default_guide="mean-field", guides=tuple(dict.fromkeys([*GENERIC_GUIDES, *guides])),
                     backends=("svi",) if train_norms and net.norms else ("svi", "laplace", "nuts"))
    small = sum(math.prod(s.shape) for s in weight_sites) <= FULL_LAPLACE_MAX
    laplace = LAPLACE if small else {**LAPLACE, "subset": "last-layer"}
    zm = ModuleModel(net, task, outputs, guides=guides, init_loc_fn=init_loc, modules={POINTS: net.state},
                       last_layer=[s.name for s in weight_sites if s.name.rpartition(".")[0] == last],
                       defaults=Defaults(fit={"laplace": laplace, "nuts": {"max_tree_depth": 7, **BATCHED_SAMPLER},
                                              "chees": BATCHED_SAMPLER}, num_samples=100),
                       display=Display(summary_sites=list(extra)), vectorized=True)
    zm.card = card
    if data is not None:
        zm.validate(tuple(training_arrays(data)))
    return zm


def register_module(name: str, builder: Callable[..., nn.Module], *, task: str | None = None, paper: str = "",
                    notes: str = "") -> Callable:
    """Register ``builder`` (keyword config -> ``nn.Module``) as the model ``name``: ``zoo.load(name, data=...,
    **config)`` builds ``zoo.bayesian(builder(**config), ...)``, and its posteriors save and load by name.

    Examples
    --------
    >>> import torch, zoo
    >>> def mlp(width: int = 32):
    ...     return torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.ReLU(), torch.nn.Linear(width, 3))
    >>> _ = zoo.register_module("doc-mlp", mlp, task="classification")
    >>> zoo.load("doc-mlp", width=8).card.task
    'classification'
    >>> zoo.unregister_model("doc-mlp")
    """
    if not callable(builder):
        raise ZooError(f"register_module: builder must be a callable returning an nn.Module, got {builder!r}")

    def build(*, data=None, prior_scale: float = 1.0, sites=None, task: str | None = task,
              likelihood: str = "normal", dropout: float | None = None, **config):
        check_keywords(f"option of model {name!r}", builder, config)
        module = builder(**config)
        zm = bayesian(module, data=data, prior_scale=prior_scale, sites=sites, task=task, likelihood=likelihood,
                      dropout=dropout)
        zm.card = replace(zm.card, name=name, paper=paper, notes=notes)
        zm.config = {**config, "prior_scale": prior_scale, "sites": sites, "task": zm.task,
                     "likelihood": likelihood, "dropout": dropout}
        return zm

    register_model(name, task=task or "custom", family="module", likelihood="from the task", paper=paper,
                   notes=notes or f"an nn.Module from {getattr(builder, '__name__', 'a builder')}")(build)
    return builder

