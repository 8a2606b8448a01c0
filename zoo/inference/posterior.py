"""Posterior: the one currency every backend returns. Predicts, evaluates, lands in ArviZ, saves."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from .. import metrics
from .._data import Split, as_args, by_name, rows_of
from .._errors import ZooError
from .draws import DrawRunner, plate_values
from .linearized import LinearizedRunner
from .loop import Status
from .sites import Sites


@dataclass
class Prediction:
    """Predictive summary in the data's original units.

    Regression: ``mean``, ``std`` (total), ``epistemic_std`` (spread of the mean over draws) and
    ``aleatoric_std`` (the likelihood's noise), ``samples`` of y (draws, points).
    Classification: ``probs`` (points, classes) averaged over draws and ``draw_probs``.
    """

    mean: torch.Tensor
    std: torch.Tensor | None = None
    epistemic_std: torch.Tensor | None = None
    aleatoric_std: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    draw_probs: torch.Tensor | None = None


def _class_probs(fn) -> torch.Tensor | None:
    """Class probabilities of a categorical or Bernoulli likelihood (a Bernoulli has two classes)."""
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    if isinstance(fn, dist.Categorical):
        return fn.probs
    if isinstance(fn, dist.Bernoulli):
        return torch.stack([1 - fn.probs, fn.probs], -1)
    return None


FLAGS = ("continuous", "pointwise")  # per-site facts in a summary, not per-point values


def _moments(fn, shape) -> dict:
    """Mean and variance of ``fn`` broadcast to ``shape``; none for a distribution without them (then
    predictions summarise the samples)."""
    try:
        return {"mean": fn.mean.expand(shape), "variance": fn.variance.expand(shape)}
    except NotImplementedError:
        return {}


def _continuous(fn) -> bool:
    return not fn.support.is_discrete


def site_summary(name: str, with_log_prob: bool):
    """An extract for :class:`DrawRunner`: the site's value, its mean and variance (where the
    distribution has them), class probabilities, and with observations its pointwise log-probability."""

    def extract(trace, reduce):
        site = trace.nodes[name]
        fn, value = site["fn"], site["value"]
        shape = torch.broadcast_shapes(value.shape, fn.batch_shape + fn.event_shape)
        out = {"value": value.expand(shape).to(torch.get_default_dtype())}
        probs = _class_probs(fn)
        out.update({"probs": probs} if probs is not None else _moments(fn, shape))
        if with_log_prob:
            out["log_prob"] = fn.log_prob(value)
        out["continuous"] = torch.tensor(float(_continuous(fn)))
        out["pointwise"] = torch.tensor(float(any(f.vectorized and f.name != "_draws"
                                                  for f in site["cond_indep_stack"])))
        return out

    return extract


class Posterior:
    """Draws ``site -> tensor[chain, draw, ...]`` of a fitted :class:`ZooModel`, plus diagnostics.

    ``deterministic`` holds the model's global ``pyro.deterministic`` sites at every draw, the same shape.
    """

    def __init__(self, model, samples, *, method, sites: Sites, sample_stats=None, loss=None,
                 params=None, info=None, target_scale=(0.0, 1.0), timings=None, options=None, deterministic=None):
        self.model = model
        self.samples = samples
        self.method = method
        self.sites = sites
        self.sample_stats = sample_stats or {}
        self.loss = list(loss or [])
        self.params = params or {}
        self.info = info or {}
        self.target_scale = tuple(float(v) for v in target_scale)
        self.timings = timings or {}
        self.options = options or {}
        self.deterministic = deterministic or {}
        path = self.info.get("vectorized", "plate")
        self.runner = DrawRunner(model.predictive, sites, path)
        # what predictions run: the model at each draw, or (Laplace's GLM predictive) its linearised network
        self.predictive_runner = self.runner
        if self.info.get("predictive") == "glm":
            self.predictive_runner = LinearizedRunner(model.predictive, sites, path, self.params["laplace.loc"],
                                                      self.params.get("laplace.root"),
                                                      self.params.get("laplace.coordinates"))

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0] if self.samples else 1

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1] if self.samples else 1

    @property
    def status(self) -> Status:
        """How the fit ended: complete, stopped by a non-finite loss, or interrupted."""
        return Status(**self.info.get("status", {}))

    @property
    def task(self) -> str:
        card = self.model.card
        return card.task if card is not None else "custom"

    def flat_samples(self) -> dict[str, torch.Tensor]:
        """Draws with chains merged: ``site -> tensor[chain * draw, ...]``."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}

    def trace(self, data) -> tuple[poutine.Trace, tuple]:
        """The model run once over every draw under a vectorising plate, conditioned on ``data``
        (for models whose body broadcasts over draws; see ``info["vectorized"]``)."""
        args, _ = self.model.arguments(data, self._device())
        self.model.validate(args)
        self.model.load_params(self.params)
        draws = self.num_chains * self.num_draws
        cond = plate_values(self.flat_samples(), self.sites, draws)
        with torch.no_grad(), pyro.plate("_draws", draws, dim=-self.sites.max_plate_nesting - 1):
            return poutine.trace(poutine.condition(self.model.predictive, cond)).get_trace(*args), args

    def _device(self):
        return next(iter(self.samples.values())).device if self.samples else torch.device("cpu")

    def site(self, site: str | None = None) -> str:
        """The observed site ``site`` names (default: the only one), checked to have points of its own."""
        observed = self.sites.observed
        if site is None:
            if len(observed) != 1:
                raise ZooError(f"the model observes {observed}: say which with site=")
            site = observed[0]
        if site not in observed:
            kind = "a latent site" if site in self.sites.latent else "not an observed site of the model"
            raise ZooError(f"site={site!r} is {kind}; the observed sites are {observed}")
        # (a separate predictive, gp-exact's conditional, predicts point by point whatever the fitted model does)
        if site in self.sites.unplated and self.model.predictive is self.model.model:
            raise ZooError(f"observed site {site!r} holds all its points in one event outside any plate "
                           "(.to_event or a multivariate distribution), so per-point predictions and "
                           "log-likelihoods are not defined; sample it inside `with pyro.plate('data', len(x)):` "
                           "without .to_event to predict, evaluate or compare models")
        return site

    def _batches(self, args):
        """``args`` cut into row blocks sized so that one vectorised pass stays in bounded memory."""
        n = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 1
        size = n
        if self.model.defaults.predict_batch is not None:
            size = max(1, self.model.defaults.predict_batch * 100 // (self.num_chains * self.num_draws))
        if size >= n:
            yield args
            return
        for start in range(0, n, size):
            yield rows_of(args, slice(start, start + size))

    def _summary(self, args, site: str, with_log_prob: bool) -> dict[str, torch.Tensor]:
        """:func:`site_summary` of ``site`` at every draw, (draws, ...), block by block of points."""
        self.model.validate(args)
        self.model.load_params(self.params)
        extract = site_summary(site, with_log_prob)
        with torch.no_grad():
            parts = [self.predictive_runner.run(self.flat_samples(), block, extract) for block in self._batches(args)]
        if len(parts) == 1:
            return parts[0]
        return {k: parts[0][k] if k in FLAGS else torch.cat([p[k] for p in parts], 1) for k in parts[0]}

    def _inputs(self, x) -> tuple:
        """The model's arguments for inputs ``x`` (an array, a tuple, or a dict by name): the observations
        set to None."""
        if isinstance(x, dict):
            x = by_name(x, self.model.model, "x", every=True)[:-self.sites.num_targets]
        inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        args, _ = as_args((*inputs, *([None] * self.sites.num_targets)), device=self._device())
        return args

    def predict(self, x, site: str | None = None) -> Prediction:
        """Predictive mean and spread of ``site`` at inputs ``x`` (every draw at once, in blocks of points).

        ``x`` is the model's arguments without the observations: an array, or a tuple.
        """
        site = self.site(site)
        out = self._summary(self._inputs(x), site, with_log_prob=False)
        if "probs" in out:
            draw_probs = out["probs"]
            return Prediction(mean=draw_probs.mean(0).argmax(-1), probs=draw_probs.mean(0), draw_probs=draw_probs)
        shift, scale = self.target_scale if bool(out["continuous"][0]) else (0.0, 1.0)
        samples = out["value"] * scale + shift
        if "mean" not in out:
            return Prediction(mean=samples.mean(0), std=samples.std(0), samples=samples)
        means, variances = out["mean"] * scale + shift, out["variance"] * scale**2
        epistemic = means.var(0, unbiased=False)
        if "linearised_variance" in out:  # Laplace's closed-form linearised predictive: the weights' part
            epistemic = epistemic + out["linearised_variance"].mean(0) * scale**2
        aleatoric = variances.mean(0)
        return Prediction(mean=means.mean(0), std=(epistemic + aleatoric).sqrt(),
                          epistemic_std=epistemic.sqrt(), aleatoric_std=aleatoric.sqrt(), samples=samples)

    def log_likelihood(self, data, site: str | None = None) -> torch.Tensor:
        """Pointwise log p(y_i | theta_s) of ``site`` in original units, shape (draws, points...)."""
        site = self.site(site)
        args, _ = self.model.arguments(data, self._device())
        return self.pointwise_log_likelihood(self._summary(args, site, with_log_prob=True), site)

    def pointwise_log_likelihood(self, out: dict, site: str) -> torch.Tensor:
        """The pointwise log-likelihood in a :meth:`_summary` of ``site``, in original units."""
        if not bool(out["pointwise"][0]):
            raise ZooError(f"site {site!r} is observed outside any plate, so it has one log-likelihood per draw, "
                           "not one per point; put its observations in pyro.plate('data', N) for a pointwise one")
        log_lik = out["log_prob"]
        if bool(out["continuous"][0]):
            log_lik = log_lik - math.log(self.target_scale[1])
        return log_lik

    def evaluate(self, data, site: str | None = None) -> dict[str, float]:
        """Test metrics: ``rmse``, ``test_ll`` (regression) or ``accuracy``, ``nll``, ``ece``, ``brier``.

        ``test_ll`` is the per-point log of the predictive density, log-mean-exp over draws, in
        the data's original units, as in Hernandez-Lobato & Adams (2015) and Gal & Ghahramani (2016).
        """
        site = self.site(site)
        args, (shift, scale) = self.model.arguments(data, self._device())
        if isinstance(data, Split) and (shift, scale) != self.target_scale:
            raise ZooError("evaluate: the data's target scaling differs from the training split's; "
                           "evaluate on a split of the same dataset load")
        out = self._summary(args, site, with_log_prob=True)
        y = out["value"][0]
        if "probs" in out:  # nll = -log of the draw-averaged probability, as test_ll below
            return metrics.classification(out["probs"].mean(0), y.long())
        continuous = bool(out["continuous"][0])
        shift, scale = self.target_scale if continuous else (0.0, 1.0)
        log_lik = out["log_prob"] - (math.log(scale) if continuous else 0.0)
        log_lik = log_lik.reshape(log_lik.shape[0], -1)
        test_ll = float((torch.logsumexp(log_lik, 0) - math.log(log_lik.shape[0])).mean())
        mean = out["mean"] if "mean" in out else out["value"]
        return {"rmse": metrics.rmse(mean.mean(0) * scale + shift, y * scale + shift), "test_ll": test_ll}

    def compute_deterministic(self, args) -> None:
        """The global ``pyro.deterministic`` sites at every draw, from the model run on ``args``."""
        if not self.sites.deterministic:
            return
        names = list(self.sites.deterministic)
        indices = torch.arange(1, device=self._device()) if self.sites.subsamplable else None
        with torch.no_grad():
            out = self.runner.run(self.flat_samples(), args, lambda trace, _: {n: trace.nodes[n]["value"]
                                                                              for n in names}, indices)
        self.deterministic = {n: v.reshape(self.num_chains, self.num_draws, *v.shape[1:]) for n, v in out.items()}

    def to_arviz(self, data=None, var_names=None):
        """An ``arviz.InferenceData``; with ``data``, also predictive, log likelihood and observations.

        ``var_names``: the latent sites to include (default all, or a network's last layer).
        """
        from .arviz import to_inference_data

        return to_inference_data(self, data, var_names)

    def diagnose(self):
        """R-hat, ESS, divergences and tree depth (nuts) or the PSIS k-hat of the approximation (svi, laplace)."""
        from .diagnostics import diagnose

        return diagnose(self)

    def save(self, path):
        """Write the posterior to folder ``path``: zoo.json, samples.pt, params.pt, posterior.nc."""
        from .saving import save

        return save(self, path)

    @classmethod
    def load(cls, path) -> Posterior:
        """Read a folder written by :meth:`save` (no training data needed, nothing unpickled)."""
        from .saving import load

        return load(path, cls)

    def __repr__(self) -> str:
        return (f"Posterior({self.model.name}, method={self.method!r}, chains={self.num_chains}, "
                f"draws={self.num_draws})")
