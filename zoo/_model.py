"""ZooModel: a Pyro model and its guides travelling together, with the card that describes them."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro.infer.autoguide as ag
import torch
from pyro.infer.autoguide.initialization import init_to_median

from ._data import as_args
from ._errors import ZooError, unknown_name
from ._initialization import feasible
from ._point_masses import PointMasses


def _autoguide(cls, **defaults):
    def factory(zm: ZooModel, **options):
        kwargs = {"init_loc_fn": feasible(zm.init_loc_fn), **defaults, **options}
        try:
            return cls(zm.model, **kwargs)
        except TypeError as err:
            raise ZooError(f"guide {cls.__name__}: bad option ({err})") from None

    return factory


# Guides any model gets: Pyro autoguides built from the model itself.
GENERIC_GUIDES: dict[str, Callable] = {
    "mean-field": _autoguide(ag.AutoNormal, init_scale=0.01),
    "low-rank": _autoguide(ag.AutoLowRankMultivariateNormal, init_scale=0.01, rank=10),
    "full-rank": _autoguide(ag.AutoMultivariateNormal, init_scale=0.01),
    "delta": _autoguide(PointMasses),
}


@dataclass(frozen=True)
class Defaults:
    """How the zoo runs a model unless told otherwise: per-backend options (``{"svi": {"lr": 1e-2}}``), posterior
    draws ``zoo.fit`` keeps (1,000 unless a big network asks for fewer), and points per vectorised prediction
    pass for 100 draws (scaled to the number of draws) so that big networks predict in bounded memory."""

    fit: dict[str, dict] = field(default_factory=dict)
    num_samples: int | None = None
    predict_batch: int | None = None


@dataclass(frozen=True)
class Display:
    """How a posterior of the model is shown: the non-weight latents worth a summary table and trace plot
    (default: the scalar ones), and names for the dims of latent sites in ArviZ (``{"beta": ["feature"]}``)."""

    summary_sites: list[str] | None = None
    dims: dict[str, list[str]] = field(default_factory=dict)


class ZooModel:
    """A Pyro model with its guides: the contract between a model family and the rest of the zoo.

    A family subclasses it and overrides the template methods for what differs: :meth:`validate`,
    :meth:`arguments`, :attr:`predictive`, :meth:`refusal`, :meth:`point_estimates`, :meth:`rebuild_data`
    and :attr:`posterior_class`. A bare Pyro model gets this base class as it is.

    Parameters (the program, as the backends run it)
    ----------
    model : callable
        A Pyro model taking the data as positional arguments, observations last
        (``model(x, y=None)``). Observations sit in ``pyro.plate("data", ...)``.
    guide : callable, optional
        The default guide. Without one, the card's default guide (an autoguide) is used.
    guides : dict, optional
        Extra named guide factories ``factory(zoo_model, **options) -> guide``.
    init_loc_fn : callable
        Where latents start (a Pyro init strategy); default the prior median.
    last_layer : list of str, optional
        The output layer's weight sites: Laplace's ``subset="last-layer"`` and ``to_arviz``'s default.
    modules : dict of str to torch.nn.Module, optional
        Networks whose weights are point estimates, registered in the model or guide with
        ``pyro.module(name, module)``. Every fit starts them from their state at build time, and a
        posterior loads its fitted weights into them (from its ``params``) before it predicts.
    local_latents : bool
        The model has per-point latents in plate "data" that its own guides draw (a deep GP's layer
        outputs, an autoencoder's codes); they are redrawn at prediction, not kept as draws.
    vectorized : bool
        The model's body broadcasts over a leading plate of draws (the zoo's own families are written so).
        Without it, ``fit`` checks once whether it does, else runs it over draws with ``torch.func.vmap``,
        else in a loop; ``post.info["vectorized"]`` says which.

    Parameters (the rest)
    ----------
    config : dict, optional
        JSON-serialisable keyword config that rebuilds this model with ``zoo.load(name, **config)``.
    defaults : Defaults, optional
        Backend options, draws kept and prediction block size unless the user says otherwise.
    display : Display, optional
        Summary sites and ArviZ dims.
    """

    #: The Posterior subclass a fit of this model returns (None: :class:`zoo.Posterior`).
    posterior_class: type | None = None

    def __init__(
        self,
        model: Callable,
        guide: Callable | None = None,
        *,
        guides: dict[str, Callable] | None = None,
        init_loc_fn: Callable = init_to_median,
        last_layer: list[str] | None = None,
        modules: dict | None = None,
        local_latents: bool = False,
        vectorized: bool = False,
        config: dict | None = None,
        defaults: Defaults | None = None,
        display: Display | None = None,
    ):
        if not callable(model):
            raise ZooError(f"model must be a callable Pyro model, got {type(model).__name__}")
        self.model = model
        self.guide = guide
        self.local_latents = local_latents
        # autoguides over per-point latents are neither amortised nor minibatchable: not offered
        self.guides = {**({} if local_latents else GENERIC_GUIDES), **(guides or {})}
        self.init_loc_fn = init_loc_fn
        self.last_layer = last_layer
        self.modules = dict(modules or {})
        self.vectorized = vectorized
        self.config = config
        self.defaults = defaults or Defaults()
        self.display = display or Display()
        self._initial = {name: copy.deepcopy(m.state_dict()) for name, m in self.modules.items()}
        self._loaded = None  # the params last loaded into the modules: predicting in blocks loads them once
        self.name: str | None = None
        self.card = None

    # -- template methods: what a family overrides -------------------------------------------------

    def validate(self, args: tuple) -> None:
        """Raise :class:`zoo.ZooError` for arguments this model cannot take (default: accept all)."""

    def arguments(self, data, device=None) -> tuple[tuple, tuple[float, float]]:
        """The model's positional arguments from ``data`` (a Split, a tuple, a dict by name), on ``device``,
        and the target's (shift, scale) back to original units."""
        return as_args(data, device=device, model=self.model)

    @property
    def predictive(self) -> Callable:
        """The model as run at new inputs, when it differs from the one fitted (an exact GP fits the joint
        likelihood of its training targets and predicts through the conditional on them)."""
        return self.model

    def refusal(self, backend: str) -> str | None:
        """Why this model cannot be fitted with ``backend``, or None (default: what its card refuses)."""
        return self.card.refused.get(backend) if self.card is not None else None

    def point_estimates(self) -> dict[str, torch.Tensor]:
        """Fitted point estimates worth showing beside the draws (a GP's kernel hyperparameters), read after
        the posterior's params are loaded; ``to_arviz`` adds them to the posterior group."""
        return {}

    def rebuild_data(self) -> tuple | None:
        """The arrays the model was built from when it needs them again to be rebuilt (``gp-exact`` conditions
        on its training data); ``save`` stores them and ``load_posterior`` passes them as ``data=``."""
        return None

    def fitted_state(self) -> dict[str, torch.Tensor]:
        """Module state a posterior keeps beside the param store's, under param-store names (``name$$$key``):
        what the store does not hold (a norm layer's running statistics, weights a sampler held fixed)."""
        return {}

    def reset_modules(self) -> None:
        """Every module back to its state at build time (a fit starts from there)."""
        for name, module in self.modules.items():
            module.load_state_dict(self._initial[name])
        self._loaded = None

    def load_params(self, params: dict[str, torch.Tensor], modules: dict | None = None) -> None:
        """Load fitted weights (param-store names ``name$$$parameter``) into ``modules`` (default: the model's)."""
        if modules is None and params is self._loaded:
            return
        for name, module in (self.modules if modules is None else modules).items():
            prefix = f"{name}$$$"
            state = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
            expected = {key for key, _ in module.named_parameters()}
            missing, unexpected = expected - set(state), set(state) - expected - dict(module.named_buffers()).keys()
            if missing or unexpected:
                raise ZooError(f"the fitted weights do not fit module {name!r}: missing {sorted(missing)[:3]}, "
                               f"unexpected {sorted(unexpected)[:3]}; were they saved from a model of another config?")
            module.load_state_dict(state, strict=False)  # buffers not fitted (masks, fixed inputs): from the config
        if modules is None:
            self._loaded = params

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def make_guide(self, guide: str | Callable | None = None, **options) -> Callable:
        """The guide called ``guide`` (default: the model's own, else the card's default)."""
        if callable(guide):
            return guide
        if guide is None:
            if self.guide is not None:
                return self.guide
            guide = self.card.default_guide if self.card else "mean-field"
        if guide not in self.guides:
            raise unknown_name("guide", guide, self.guides)
        return self.guides[guide](self, **options)

    def __repr__(self) -> str:
        return f"ZooModel({self.name or getattr(self.model, '__name__', 'model')}, config={self.config})"
