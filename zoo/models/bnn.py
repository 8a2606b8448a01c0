"""Bayesian MLPs: ``bnn`` (regression) and ``bnn-classifier`` (categorical likelihood)."""

from __future__ import annotations

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_median

from .. import _checks as checks
from .._data import training_arrays
from .._errors import ZooError
from .._model import Defaults, Display, ZooModel
from .._registry import register_model
from .layers import ACTIVATIONS, layer_sizes, lecun_normal, mlp_forward, observe, sample_weights
from .likelihoods import RegressionLikelihood
from .weight_guides import WeightSite, mc_dropout_guide

# nuts and chees: the compiled leaf, and chains started within 0.1 of the initial weights: a spread of 1 (for
# parameters of scale 1) puts them far out; on yacht (50 hidden, 4 chains) it cost 342 s against 36 s and
# RMSE 0.54 against 0.28
BATCHED_SAMPLER = {"density": "compiled", "init_spread": 0.1}
# a classifier trains at a constant rate, as plain PyTorch does: decayed to a tenth (svi's default), the delta
# guide after 3 epochs of 10,000 MNIST digits (784-50-10, Adam 1e-3, batch 128) reached 88.8 % test accuracy
# against 91.0 % constant and 90.5 % for the plain PyTorch MLP (benchmarks/parity.py)
CLASSIFIER_SVI = {"lr_decay": 1.0}
# laplace: the linearised predictive over a dense Fisher. On the 20 UCI splits of boston, concrete, energy and
# yacht (50 hidden) its test LL was -2.79 / -3.03 / -0.65 / -0.92 against -4.55 / -3.23 / -0.67 / -1.46 for the
# sampled network over a diagonal Fisher (benchmarks/uci.py); the linearised predictive over a diagonal did not
# help (boston -4.35). A dense matrix over more weights than this would not fit: bigger nets get their last layer's
FULL_LAPLACE_MAX = 4000
LAPLACE = {"curvature": "fisher", "hessian": "full", "predictive": "glm", "prior_rounds": 3, "num_steps": 1500,
           "optimizer": "adam"}
# a Gaussian likelihood: the exact GGN, and the evidence's noise precision (MacKay's beta = (N - gamma) / RSS)
# re-estimated over ten rounds of 500 steps: the joint's mode put the noise at the overfitted training residuals
# (boston split 0: train RMSE 0.85, test 3.42). 20 UCI splits (50 hidden, benchmarks/uci.py laplace-default), test
# LL against the rounds above: boston -2.54 / -2.79, concrete -2.96 / -3.03, energy -0.63 / -0.65, yacht -1.13 / -0.92
LAPLACE_GAUSSIAN = {**LAPLACE, "curvature": "ggn", "prior_rounds": 10, "num_steps": 500}
GUIDES = ("mean-field", "low-rank", "full-rank", "delta", "mc-dropout")
PAPERS = ("Blundell et al. 2015, Weight Uncertainty in Neural Networks; "
          "Gal & Ghahramani 2016, Dropout as a Bayesian Approximation")


class BayesianMLP:
    """A Pyro model: Gaussian priors on every weight, then a Gaussian or categorical likelihood.

    Regression: ``y ~ Normal(f(x), precision^-1/2)`` with ``precision ~ Gamma(a, b)`` (or a fixed
    ``noise_scale``). Classification: ``y ~ Categorical(logits=f(x))``. The latent function is
    recorded as the deterministic site ``f`` (regression) or ``logits``.
    """

    def __init__(self, sizes, activation, prior_scale, task, likelihood: RegressionLikelihood | None):
        self.sizes = sizes
        self.activation = ACTIVATIONS[activation]
        self.prior_scale = prior_scale
        self.task = task
        self.likelihood = likelihood  # regression only

    def __call__(self, x, y=None):
        layers = sample_weights(self.sizes, self.prior_scale, x.device)
        scales = self.likelihood.sample_noise(x.device) if self.likelihood else None
        with pyro.plate("data", x.shape[0]) as idx:
            out = mlp_forward(x[idx], layers, self.activation)
            y = None if y is None else y[idx]
            return self.likelihood.observe(out, y, scales) if self.likelihood else observe(out, y)


def _infer_sizes(data, in_features, out_features, task):
    if data is None:
        if in_features is None:
            raise ZooError("bnn: give data= (a dataset or split) or in_features= to size the network")
        return in_features, out_features
    x, y = training_arrays(data)
    if x.dim() != 2:
        raise ZooError(f"bnn: data x must be 2-D (points, features), got shape {tuple(x.shape)}")
    if task == "classification" and out_features is None:
        out_features = int(y.max()) + 1
    return x.shape[1], out_features


class MLPModel(ZooModel):
    """A Bayesian MLP: x is checked against the input layer, y against the task (real targets or labels)."""

    def __init__(self, net, in_features: int, num_classes: int | None, **kwargs):
        super().__init__(net, **kwargs)
        self.in_features, self.num_classes = in_features, num_classes

    def validate(self, args):
        in_features, task, num_classes = self.in_features, self.model.task, self.num_classes
        if not args or not isinstance(args[0], torch.Tensor):
            raise ZooError("bnn: expected data (x, y) or x with x a tensor of shape (points, features)")
        x = args[0]
        if x.dim() != 2 or x.shape[1] != in_features:
            raise ZooError(f"bnn: x must have shape (points, {in_features}) as the network was built "
                           f"for {in_features} features; got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ZooError(f"bnn: x must be floating point, got {x.dtype}")
        y = args[1] if len(args) > 1 else None
        if y is None:
            return
        if y.dim() != 1:
            raise ZooError(f"bnn: y must be 1-D (one target per point), got shape {tuple(y.shape)}")
        if task == "regression" and not y.is_floating_point():
            raise ZooError(f"bnn: regression targets y must be floating point, got {y.dtype}")
        if task == "classification":
            if y.is_floating_point() and not torch.equal(y, y.round()):
                raise ZooError("bnn-classifier: y must hold integer class labels, got fractional values")
            if y.min() < 0 or y.max() >= num_classes:
                raise ZooError(f"bnn-classifier: labels must lie in [0, {num_classes - 1}], "
                               f"got range [{int(y.min())}, {int(y.max())}]")


def _init_loc(site):
    name = site["name"]
    if name.startswith("w") and name[1:].isdigit():
        shape = site["fn"].event_shape
        return lecun_normal(shape, shape[-1], site["fn"].mean.device)
    if name.startswith("b") and name[1:].isdigit():
        return torch.zeros_like(site["fn"].mean)
    return init_to_median(site)


def _build(task, data, in_features, out_features, hidden, activation, prior_scale,
           precision_prior, noise_scale, dropout, likelihood="normal"):
    if activation not in ACTIVATIONS:
        raise ZooError(f"bnn: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    name = "bnn" if task == "regression" else "bnn-classifier"
    checks.positive(name, prior_scale=prior_scale)
    checks.probability(name, dropout=dropout)
    hidden = checks.widths(name, "hidden", hidden)
    if task == "regression":
        checks.positive_or_none(name, noise_scale=noise_scale)
        if not isinstance(precision_prior, (list, tuple)) or len(precision_prior) != 2:
            raise ZooError(f"bnn: precision_prior must be (shape, rate) of its Gamma prior, got {precision_prior!r}")
        shape, rate = precision_prior
        checks.positive(name, **{"precision_prior shape": shape, "precision_prior rate": rate})
        law = RegressionLikelihood(likelihood, tuple(precision_prior), noise_scale)
        out_features = law.outputs
    in_features, out_features = _infer_sizes(data, in_features, out_features, task)
    checks.positive_int(name, in_features=in_features)
    if task == "classification":
        checks.positive_int(name, out_features=out_features)
    sizes = layer_sizes(in_features, hidden, out_features)
    num_weights = sum((n_in + 1) * n_out for n_in, n_out in sizes)
    net = BayesianMLP(sizes, activation, prior_scale, task, law if task == "regression" else None)
    extra = net.likelihood.noise_sites if net.likelihood else {}
    laplace = LAPLACE
    if task == "regression" and law.kind != "student-t":  # (the GGN knows no Student-t)
        laplace = {**LAPLACE_GAUSSIAN, **({"noise": "precision"} if "precision" in extra else {})}
    if num_weights > FULL_LAPLACE_MAX:
        laplace = {**laplace, "subset": "last-layer"}

    def dropout_guide(zm, p: float = dropout):
        sites = [site for i, (n_in, n_out) in enumerate(sizes)
                 for site in (WeightSite(f"w{i}", (n_out, n_in), n_in, p, gain=1.0),
                              WeightSite(f"b{i}", (n_out,), n_in))]
        return mc_dropout_guide("mc_dropout", sites, extra)

    config = dict(in_features=in_features, hidden=hidden, activation=activation,
                  prior_scale=prior_scale, dropout=dropout)
    if task == "regression":
        config.update(precision_prior=list(precision_prior), noise_scale=noise_scale, likelihood=likelihood)
    else:
        config.update(out_features=out_features)
    zm = MLPModel(
        net, in_features, out_features, guides={"mc-dropout": dropout_guide}, config=config, init_loc_fn=_init_loc,
        last_layer=[f"w{len(sizes) - 1}", f"b{len(sizes) - 1}"],
        # networks: a PSD curvature, the prior scale moved to the evidence's choice before the final MAP; NUTS with
        # the compiled leaf, trees of at most 128 steps (a network's chains hit any depth: the weights' modes are
        # not crossed by deeper trees)
        defaults=Defaults(fit={**({"svi": CLASSIFIER_SVI} if task == "classification" else {}),
                               "laplace": laplace,
                               "nuts": {"max_tree_depth": 7, **BATCHED_SAMPLER}, "chees": BATCHED_SAMPLER}),
        display=Display(summary_sites=list(extra)),
        vectorized=True,
    )
    if data is not None:
        zm.validate(tuple(training_arrays(data)))
    return zm


@register_model("bnn", task="regression", family="bayesian-mlp",
                likelihood="Normal(f(x), precision^-1/2), precision ~ Gamma(1, 0.01) by default; "
                           "likelihood='heteroscedastic' or 'student-t'",
                default_guide="mean-field", guides=GUIDES, paper=PAPERS,
                notes="Set data= to size the input layer; dropout= is the MC dropout guide's p.")
def bnn(*, data=None, in_features: int | None = None, hidden=(50,), activation: str = "relu",
        prior_scale: float = 1.0, precision_prior=(1.0, 0.01), noise_scale: float | None = None,
        dropout: float = 0.05, likelihood: str = "normal") -> ZooModel:
    """Bayesian MLP regressor with N(0, prior_scale^2) priors on all weights and biases.

    ``likelihood``: ``"normal"`` (one noise level), ``"heteroscedastic"`` (a second output head gives the
    noise scale at each x) or ``"student-t"`` (heavy tails, degrees of freedom learned); see
    :mod:`zoo.models.likelihoods`.
    """
    return _build("regression", data, in_features, 1, hidden, activation, prior_scale,
                  precision_prior, noise_scale, dropout, likelihood)


@register_model("bnn-classifier", task="classification", family="bayesian-mlp",
                likelihood="Categorical(logits=f(x))", default_guide="mean-field", guides=GUIDES,
                paper=PAPERS, notes="out_features is the number of classes (inferred from data=).")
def bnn_classifier(*, data=None, in_features: int | None = None, out_features: int | None = None,
                   hidden=(50,), activation: str = "relu", prior_scale: float = 1.0,
                   dropout: float = 0.05) -> ZooModel:
    """Bayesian MLP classifier with N(0, prior_scale^2) priors on all weights and biases."""
    if data is None and out_features is None:
        raise ZooError("bnn-classifier: give data= or out_features= (the number of classes)")
    return _build("classification", data, in_features, out_features, hidden, activation,
                  prior_scale, (6.0, 6.0), None, dropout)
