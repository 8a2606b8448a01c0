"""Generalised linear models and a varying-intercepts-and-slopes hierarchical regression.

``linear-regression``, ``logistic-regression``, ``poisson-regression`` take ``(x, y)``;
``hierarchical-regression`` takes ``(x, group, y)`` with ``group`` integer ids in [0, G).
Every model broadcasts over a leading plate of posterior draws (``vectorized=True``): vector sites
arrive as ``(S, 1, d)`` and the linear predictor ``alpha + (x * beta).sum(-1)`` comes out as ``(S, n)``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from .._data import training_arrays
from .._errors import ZooError
from .._model import Display, ZooModel
from .._registry import register_model

GUIDES = ("full-rank", "mean-field", "low-rank", "delta")
PARAMETERIZATIONS = ("centered", "noncentered")
GLM_PAPER = "Gelman, Carlin, Stern, Dunson, Vehtari & Rubin 2013, Bayesian Data Analysis (3rd ed.), ch. 14-16"
HIER_PAPER = ("Gelman & Hill 2007, Data Analysis Using Regression and Multilevel/Hierarchical Models, ch. 13; "
              "Betancourt & Girolami 2015, Hamiltonian Monte Carlo for Hierarchical Models")
CENTRED_NO_MODE = ("the centred hierarchical density has no mode (it is unbounded as tau -> 0), so its "
                   "MAP and Hessian are meaningless; use parameterization='noncentered' for laplace, or nuts")
PRIORS = ("Priors: alpha ~ Normal(0, prior_scale_intercept=10), beta_j ~ Normal(0, prior_scale=2.5) per "
          "coefficient")


def _positive(name: str, value: float, **options) -> None:
    for key, v in {name: value, **options}.items():
        if not v > 0:
            raise ZooError(f"{key} must be positive, got {v}")


def _normal(loc: float, scale: float, device, shape=()) -> dist.Distribution:
    prior = dist.Normal(torch.tensor(float(loc), device=device), torch.tensor(float(scale), device=device))
    return prior.expand(list(shape)).to_event(len(shape)) if shape else prior


def _half_normal(scale: float, device, shape=()) -> dist.Distribution:
    prior = dist.HalfNormal(torch.tensor(float(scale), device=device))
    return prior.expand(list(shape)).to_event(len(shape)) if shape else prior


def linear_predictor(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``alpha + x @ beta`` for ``x`` (n, d) and draws of ``alpha`` (*draws, 1) or (), ``beta`` (*draws, 1, d)
    or (d,); returns (*draws, n), n on the data plate's dim -1."""
    return alpha + (x * beta).sum(-1)


# ---------------------------------------------------------------- checks


def _check_x(name: str, x, in_features: int | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ZooError(f"{name}: expected x as a tensor of shape (points, features), got {type(x).__name__}")
    if x.dim() != 2:
        raise ZooError(f"{name}: x must be 2-D (points, features), got shape {tuple(x.shape)}; "
                       "use x.unsqueeze(-1) for a single feature")
    if not x.is_floating_point():
        raise ZooError(f"{name}: x must be floating point, got {x.dtype}")
    if in_features is not None and x.shape[1] != in_features:
        raise ZooError(f"{name}: x must have shape (points, {in_features}) as the model was built for "
                       f"{in_features} features; got {tuple(x.shape)}")
    return x


def _check_y(name: str, y, rows: int, kind: str) -> None:
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.shape[0] != rows:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ZooError(f"{name}: y must be 1-D with one target per point, shape ({rows},); got {shape}")
    if kind == "real":
        if not y.is_floating_point():
            raise ZooError(f"{name}: targets y must be floating point, got {y.dtype}; use y.float()")
        return
    whole = y if not y.is_floating_point() else y.round()
    if y.is_floating_point() and not torch.equal(y, whole):
        raise ZooError(f"{name}: y must hold whole numbers ({kind}), got fractional values such as "
                       f"{float(y[y != whole][0]):g}")
    if kind == "binary" and not bool(((y == 0) | (y == 1)).all()):
        bad = sorted({int(v) for v in y[(y != 0) & (y != 1)][:5].tolist()})
        raise ZooError(f"{name}: labels y must be 0 or 1, got values such as {bad}")
    if kind == "counts" and bool((y < 0).any()):
        raise ZooError(f"{name}: counts y must be non-negative, got minimum {int(y.min())}")


def _check_group(name: str, group, rows: int, num_groups: int) -> None:
    if not isinstance(group, torch.Tensor) or group.dim() != 1 or group.shape[0] != rows:
        shape = tuple(group.shape) if isinstance(group, torch.Tensor) else type(group).__name__
        raise ZooError(f"{name}: group must be a 1-D tensor of group ids, one per point, shape ({rows},); "
                       f"got {shape}")
    if group.is_floating_point() or group.dtype == torch.bool or group.is_complex():
        raise ZooError(f"{name}: group must be an integer tensor of group ids, got {group.dtype}; use group.long()")
    if rows and (int(group.min()) < 0 or int(group.max()) >= num_groups):
        raise ZooError(f"{name}: group ids must lie in [0, {num_groups - 1}] as the model was built for "
                       f"{num_groups} groups; got range [{int(group.min())}, {int(group.max())}]")


def _features(name: str, data, in_features: int | None) -> int | None:
    if data is None:
        return in_features
    x = _check_x(name, torch.as_tensor(training_arrays(data)[0]), None)
    if in_features is not None and in_features != x.shape[1]:
        raise ZooError(f"{name}: in_features={in_features} disagrees with the data's {x.shape[1]} features")
    return int(x.shape[1])


# ---------------------------------------------------------------- GLMs

LIKELIHOODS = {"linear": "real", "logistic": "binary", "poisson": "counts"}


class GLM:
    """``y ~ family(alpha + x @ beta)`` with ``alpha ~ N(0, prior_scale_intercept)``, ``beta_j ~ N(0, prior_scale)``
    and, for the linear family, ``sigma ~ HalfNormal(noise_prior_scale)``."""

    def __init__(self, family: str, prior_scale: float, prior_scale_intercept: float, noise_prior_scale: float):
        self.family = family
        self.prior_scale = prior_scale
        self.prior_scale_intercept = prior_scale_intercept
        self.noise_prior_scale = noise_prior_scale

    def __call__(self, x, y=None):
        device = x.device
        alpha = pyro.sample("alpha", _normal(0.0, self.prior_scale_intercept, device))
        beta = pyro.sample("beta", _normal(0.0, self.prior_scale, device, (x.shape[-1],)))
        if self.family == "linear":
            sigma = pyro.sample("sigma", _half_normal(self.noise_prior_scale, device))
        with pyro.plate("data", x.shape[0]) as idx:
            eta = linear_predictor(x[idx], alpha, beta)
            obs = None if y is None else y[idx].to(eta.dtype)
            if self.family == "linear":
                return pyro.sample("y", dist.Normal(eta, sigma), obs=obs)
            if self.family == "logistic":
                return pyro.sample("y", dist.Bernoulli(logits=eta), obs=obs)
            # a rate of exp(80) is already absurd; the cap keeps early SVI/warm-up steps finite
            return pyro.sample("y", dist.Poisson(eta.clamp(max=80.0).exp()), obs=obs)


class GLMModel(ZooModel):
    """A GLM: data (x, y), x checked against the features it was built for, y against the family's support."""

    def __init__(self, name: str, glm: GLM, in_features: int | None, **kwargs):
        super().__init__(glm, **kwargs)
        self.label, self.in_features = name, in_features

    def validate(self, args):
        if not args:
            raise ZooError(f"{self.label}: expected data (x, y) or x, with x a tensor of shape (points, features)")
        if len(args) > 2:
            raise ZooError(f"{self.label}: expected data (x, y), got {len(args)} arrays")
        x = _check_x(self.label, args[0], self.in_features)
        _check_y(self.label, args[1] if len(args) > 1 else None, x.shape[0], LIKELIHOODS[self.model.family])


def _glm(name: str, family: str, data, in_features, prior_scale, prior_scale_intercept,
         noise_prior_scale=1.0) -> ZooModel:
    _positive("prior_scale", prior_scale, prior_scale_intercept=prior_scale_intercept,
              noise_prior_scale=noise_prior_scale)
    in_features = _features(name, data, in_features)
    config = dict(in_features=in_features, prior_scale=prior_scale, prior_scale_intercept=prior_scale_intercept)
    if family == "linear":
        config["noise_prior_scale"] = noise_prior_scale
    summary = ["alpha", "beta", "sigma"] if family == "linear" else ["alpha", "beta"]
    zm = GLMModel(name, GLM(family, prior_scale, prior_scale_intercept, noise_prior_scale), in_features,
                  config=config, display=Display(summary_sites=summary, dims={"beta": ["feature"]}), vectorized=True)
    if data is not None:
        zm.validate(tuple(training_arrays(data)))
    return zm


@register_model("linear-regression", task="regression", family="glm",
                likelihood="Normal(alpha + x @ beta, sigma), sigma ~ HalfNormal(noise_prior_scale=1)",
                default_guide="full-rank", guides=GUIDES, paper=GLM_PAPER,
                notes=PRIORS + "; scales suit standardised data (the zoo's UCI loader standardises x and y).")
def linear_regression(*, data=None, in_features: int | None = None, prior_scale: float = 2.5,
                      prior_scale_intercept: float = 10.0, noise_prior_scale: float = 1.0) -> ZooModel:
    """Bayesian linear regression; data ``(x, y)`` with x (points, features) and real y."""
    return _glm("linear-regression", "linear", data, in_features, prior_scale, prior_scale_intercept,
                noise_prior_scale)


@register_model("logistic-regression", task="classification", family="glm",
                likelihood="Bernoulli(logits=alpha + x @ beta)", default_guide="full-rank", guides=GUIDES,
                paper=GLM_PAPER, notes=PRIORS + "; labels y in {0, 1}; evaluate gives accuracy, nll, ece, brier.")
def logistic_regression(*, data=None, in_features: int | None = None, prior_scale: float = 2.5,
                        prior_scale_intercept: float = 10.0) -> ZooModel:
    """Bayesian logistic regression; data ``(x, y)`` with y in {0, 1}."""
    return _glm("logistic-regression", "logistic", data, in_features, prior_scale, prior_scale_intercept)


@register_model("poisson-regression", task="regression", family="glm",
                likelihood="Poisson(rate=exp(alpha + x @ beta))", default_guide="full-rank", guides=GUIDES,
                paper=GLM_PAPER, notes=PRIORS + "; y are non-negative counts (integer or whole-valued float "
                "tensors), not standardised; no offset/exposure term.")
def poisson_regression(*, data=None, in_features: int | None = None, prior_scale: float = 2.5,
                       prior_scale_intercept: float = 10.0) -> ZooModel:
    """Bayesian Poisson regression with a log link; data ``(x, y)`` with y counts."""
    return _glm("poisson-regression", "poisson", data, in_features, prior_scale, prior_scale_intercept)


# ---------------------------------------------------------------- hierarchical


class HierarchicalRegression:
    """Varying intercepts and slopes: ``y_i ~ N(alpha[g_i] + x_i @ beta[g_i], sigma)`` with
    ``alpha_g ~ N(mu_alpha, tau_alpha)`` and ``beta_gj ~ N(mu_beta_j, tau_beta_j)``.

    Non-centred: ``alpha_raw_g ~ N(0, 1)``, ``alpha_g = mu_alpha + tau_alpha * alpha_raw_g`` (deterministic),
    and the same for beta, which removes the funnel between tau and the group effects.
    """

    def __init__(self, num_groups: int, parameterization: str, prior_scale_mu: float, prior_scale_tau: float,
                 noise_prior_scale: float):
        self.num_groups = num_groups
        self.noncentered = parameterization == "noncentered"
        self.prior_scale_mu = prior_scale_mu
        self.prior_scale_tau = prior_scale_tau
        self.noise_prior_scale = noise_prior_scale

    def __call__(self, x, group, y=None):
        device, d = x.device, x.shape[-1]
        mu_alpha = pyro.sample("mu_alpha", _normal(0.0, self.prior_scale_mu, device))
        tau_alpha = pyro.sample("tau_alpha", _half_normal(self.prior_scale_tau, device))
        mu_beta = pyro.sample("mu_beta", _normal(0.0, self.prior_scale_mu, device, (d,)))
        tau_beta = pyro.sample("tau_beta", _half_normal(self.prior_scale_tau, device, (d,)))
        sigma = pyro.sample("sigma", _half_normal(self.noise_prior_scale, device))
        with pyro.plate("group", self.num_groups, dim=-1):
            if self.noncentered:
                alpha_raw = pyro.sample("alpha_raw", _normal(0.0, 1.0, device))
                beta_raw = pyro.sample("beta_raw", _normal(0.0, 1.0, device, (d,)))
                alpha = pyro.deterministic("alpha", mu_alpha + tau_alpha * alpha_raw, event_dim=0)
                beta = pyro.deterministic("beta", mu_beta + tau_beta * beta_raw, event_dim=1)
            else:
                alpha = pyro.sample("alpha", dist.Normal(mu_alpha, tau_alpha))
                beta = pyro.sample("beta", dist.Normal(mu_beta, tau_beta).to_event(1))
        # alpha: (*draws, G), beta: (*draws, G, d); per point: (*draws, n) and (*draws, n, d)
        with pyro.plate("data", x.shape[0], dim=-1) as idx:
            g = group[idx]
            mean = alpha[..., g] + (x[idx] * beta[..., g, :]).sum(-1)
            return pyro.sample("y", dist.Normal(mean, sigma), obs=None if y is None else y[idx])


def _hier_arrays(data):
    split = getattr(data, "train", data)
    if not isinstance(split, (tuple, list)) or len(split) not in (2, 3):
        raise ZooError("hierarchical-regression: data= must be a tuple (x, group, y) or (x, group), "
                       f"got {type(split).__name__}")
    return tuple(torch.as_tensor(a) for a in split)


class HierarchicalModel(ZooModel):
    """Varying intercepts and slopes: data (x, group, y) checked against the features and groups it was built for;
    the centred parameterisation refuses laplace."""

    def __init__(self, model: HierarchicalRegression, in_features: int | None, **kwargs):
        super().__init__(model, **kwargs)
        self.in_features = in_features

    def validate(self, args):
        name, num_groups = "hierarchical-regression", self.model.num_groups
        if len(args) not in (2, 3):
            raise ZooError(f"{name}: expected data (x, group, y) or (x, group) with group integer ids in "
                           f"[0, {num_groups - 1}]; got {len(args)} array(s)")
        x = _check_x(name, args[0], self.in_features)
        _check_group(name, args[1], x.shape[0], num_groups)
        _check_y(name, args[2] if len(args) > 2 else None, x.shape[0], "real")

    def refusal(self, backend):
        # the centred joint density grows without bound as tau -> 0 with every group at mu: it has no MAP
        if backend == "laplace" and not self.model.noncentered:
            return CENTRED_NO_MODE
        return super().refusal(backend)


@register_model("hierarchical-regression", task="regression", family="hierarchical",
                likelihood="Normal(alpha[g] + x @ beta[g], sigma), sigma ~ HalfNormal(1)",
                default_guide="full-rank", guides=GUIDES, paper=HIER_PAPER,
                notes="Data (x, group, y). Varying intercepts and slopes by group: alpha_g ~ N(mu_alpha, tau_alpha), "
                      "beta_gj ~ N(mu_beta_j, tau_beta_j), mu ~ N(0, 10), tau ~ HalfNormal(1). "
                      "parameterization='noncentered' samples alpha_raw, beta_raw ~ N(0, 1) (fewer NUTS "
                      "divergences with few points per group). num_groups is inferred from data= (max id + 1).")
def hierarchical_regression(*, data=None, in_features: int | None = None, num_groups: int | None = None,
                            parameterization: str = "centered", prior_scale_mu: float = 10.0,
                            prior_scale_tau: float = 1.0, noise_prior_scale: float = 1.0) -> ZooModel:
    """Gelman & Hill's varying-intercept, varying-slope regression; data ``(x, group, y)``."""
    name = "hierarchical-regression"
    if parameterization not in PARAMETERIZATIONS:
        raise ZooError(f"{name}: parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
    _positive("prior_scale_mu", prior_scale_mu, prior_scale_tau=prior_scale_tau,
              noise_prior_scale=noise_prior_scale)
    if data is not None:
        arrays = _hier_arrays(data)
        x = _check_x(name, arrays[0], None)
        if in_features is not None and in_features != x.shape[1]:
            raise ZooError(f"{name}: in_features={in_features} disagrees with the data's {x.shape[1]} features")
        in_features = int(x.shape[1])
        group = arrays[1]
        _check_group(name, group, x.shape[0], 2**62)
        seen = int(group.max()) + 1 if group.numel() else 0
        if num_groups is None:
            num_groups = seen
        elif seen > num_groups:
            raise ZooError(f"{name}: num_groups={num_groups} but the data have group ids up to {seen - 1}")
    if num_groups is None:
        raise ZooError(f"{name}: give data= (x, group, y) or num_groups= to size the group plate")
    if int(num_groups) < 1:
        raise ZooError(f"{name}: num_groups must be at least 1, got {num_groups}")
    num_groups = int(num_groups)
    model = HierarchicalRegression(num_groups, parameterization, prior_scale_mu, prior_scale_tau, noise_prior_scale)
    config = dict(in_features=in_features, num_groups=num_groups, parameterization=parameterization,
                  prior_scale_mu=prior_scale_mu, prior_scale_tau=prior_scale_tau, noise_prior_scale=noise_prior_scale)
    dims = {"alpha": ["group"], "alpha_raw": ["group"], "beta": ["group", "feature"],
            "beta_raw": ["group", "feature"], "mu_beta": ["feature"], "tau_beta": ["feature"]}
    summary = ["mu_alpha", "tau_alpha", "mu_beta", "tau_beta", "sigma"]
    zm = HierarchicalModel(model, in_features, config=config, display=Display(summary_sites=summary, dims=dims),
                           vectorized=True)
    if data is not None:
        zm.validate(arrays)
    return zm
