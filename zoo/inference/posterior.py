"""Posterior: the one currency every backend returns. Predicts, evaluates, lands in ArviZ, saves."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch
from pyro import poutine

from .. import metrics
from .._data import Split, as_args
from .._errors import ZooError
from ._base import Sites

FORMAT = "zoo-posterior"
VERSION = 1


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


class Posterior:
    """Draws ``site -> tensor[chain, draw, ...]`` of a fitted :class:`ZooModel`, plus diagnostics."""

    def __init__(self, model, samples, *, method, sites: Sites, sample_stats=None, loss=None,
                 params=None, info=None, target_scale=(0.0, 1.0), timings=None, options=None):
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

    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    @property
    def task(self) -> str:
        card = self.model.card
        return card.task if card is not None else "custom"

    def flat_samples(self) -> dict[str, torch.Tensor]:
        """Draws with chains merged: ``site -> tensor[chain * draw, ...]``."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}

    def trace(self, data) -> tuple[poutine.Trace, tuple]:
        """The model run once over every draw (a vectorised plate), conditioned on ``data``."""
        args, _ = as_args(data, device=self._device())
        return self._trace_args(args), args

    def _trace_args(self, args: tuple) -> poutine.Trace:
        """:meth:`trace` for arguments already converted by ``as_args``."""
        self.model.validate(args)
        self.model.load_params(self.params)
        flat = self.flat_samples()
        draws = next(iter(flat.values())).shape[0]
        mpn = self.model.max_plate_nesting
        cond = {}
        for name, (shape, event_dim) in self.sites.latent.items():
            pad = mpn - (len(shape) - event_dim)
            cond[name] = flat[name].reshape(draws, *([1] * pad), *shape)
        with torch.no_grad(), pyro.plate("_draws", draws, dim=-mpn - 1):
            return poutine.trace(poutine.condition(self.model.predictive, cond)).get_trace(*args)

    def _device(self):
        return next(iter(self.samples.values())).device

    def _observed(self, trace):
        if len(self.sites.observed) != 1:
            raise ZooError(f"predict/evaluate need one observed site, the model has {self.sites.observed}")
        return trace.nodes[self.sites.observed[0]]

    def _batches(self, args):
        """``args`` cut into row blocks sized so that one vectorised pass stays in bounded memory."""
        n = args[0].shape[0]
        size = n
        if self.model.predict_batch is not None:
            size = max(1, self.model.predict_batch * 100 // (self.num_chains * self.num_draws))
        for start in range(0, max(n, 1), size):
            yield tuple(a[start:start + size] if isinstance(a, torch.Tensor) and a.dim() else a for a in args)

    def _observed_fns(self, args):
        """The observed site's distribution and value over all draws, block by block of points."""
        for block in self._batches(args):
            site = self._observed(self._trace_args(block))
            yield site["fn"], site["value"]

    def predict(self, x) -> Prediction:
        """Predictive mean and spread at inputs ``x`` (vectorised over draws, in blocks of points).

        ``x`` is the model's arguments without the observations: an array, or a tuple.
        """
        args = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        args, _ = as_args((*args, None), device=self._device())
        fns, values = zip(*self._observed_fns(args), strict=True)
        if self._is_classifier(fns[0]):
            draw_probs = torch.cat([fn.probs for fn in fns], -2)
            return Prediction(mean=draw_probs.mean(0).argmax(-1), probs=draw_probs.mean(0),
                              draw_probs=draw_probs)
        shift, scale = self.target_scale
        samples = torch.cat(values, -1) * scale + shift
        try:
            means = torch.cat([fn.mean.expand(v.shape) for fn, v in zip(fns, values, strict=True)], -1)
            variances = torch.cat([fn.variance.expand(v.shape) for fn, v in zip(fns, values, strict=True)], -1)
        except NotImplementedError:
            return Prediction(mean=samples.mean(0), std=samples.std(0), samples=samples)
        means, variances = means * scale + shift, variances * scale**2
        epistemic = means.var(0, unbiased=False)
        aleatoric = variances.mean(0)
        return Prediction(mean=means.mean(0), std=(epistemic + aleatoric).sqrt(),
                          epistemic_std=epistemic.sqrt(), aleatoric_std=aleatoric.sqrt(),
                          samples=samples)

    def log_likelihood(self, data) -> torch.Tensor:
        """Pointwise log p(y_i | theta_s) in original units, shape (draws, points)."""
        args, _ = as_args(data, device=self._device())
        fns, values = zip(*self._observed_fns(args), strict=True)
        log_lik = torch.cat([fn.log_prob(v) for fn, v in zip(fns, values, strict=True)], -1)
        if not self._is_classifier(fns[0]):
            log_lik = log_lik - math.log(self.target_scale[1])
        return log_lik

    def evaluate(self, data) -> dict[str, float]:
        """Test metrics: ``rmse``, ``test_ll`` (regression) or ``accuracy``, ``nll``, ``ece``, ``brier``.

        ``test_ll`` is the per-point log of the predictive density, log-mean-exp over draws, in
        the data's original units, as in Hernandez-Lobato & Adams (2015) and Gal & Ghahramani (2016).
        """
        args, (shift, scale) = as_args(data, device=self._device())
        if isinstance(data, Split) and (shift, scale) != self.target_scale:
            raise ZooError("evaluate: the data's target scaling differs from the training split's; "
                           "evaluate on a split of the same dataset load")
        pred = self.predict(args[:-1])
        y = args[-1]
        if pred.probs is not None:  # nll = -log of the draw-averaged probability, as test_ll below
            return metrics.classification(pred.probs, y)
        log_lik = self.log_likelihood(args)
        test_ll = float((torch.logsumexp(log_lik, 0) - math.log(log_lik.shape[0])).mean())
        y_orig = y * self.target_scale[1] + self.target_scale[0]
        return {"rmse": metrics.rmse(pred.mean, y_orig), "test_ll": test_ll}

    @staticmethod
    def _is_classifier(fn) -> bool:
        return hasattr(fn, "probs") and isinstance(fn, pyro.distributions.Categorical)

    def to_arviz(self, data=None, var_names=None):
        """An ``arviz.InferenceData``; with ``data``, also predictive, log likelihood and observations.

        ``var_names``: the latent sites to include (default all, or a network's last layer).
        """
        from .arviz import to_inference_data

        return to_inference_data(self, data, var_names)

    def save(self, path) -> Path:
        """Write the posterior to folder ``path``: zoo.json, samples.pt, params.pt, posterior.nc."""
        if self.model.name is None:
            raise ZooError("save: only registered models can be saved; register it with "
                           "@zoo.register_model so load_posterior can rebuild it")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT, "version": VERSION, "model": self.model.name, "config": self.model.config,
            "method": self.method, "options": _jsonable(self.options), "target_scale": self.target_scale,
            "sites": {"latent": {k: [list(s), e] for k, (s, e) in self.sites.latent.items()},
                      "observed": self.sites.observed,
                      "local": {k: list(s) for k, s in self.sites.local.items()}},
            "loss": self.loss, "info": _jsonable(self.info), "timings": self.timings,
        }
        (path / "zoo.json").write_text(json.dumps(meta, indent=1))
        torch.save({"samples": _cpu(self.samples), "sample_stats": _cpu(self.sample_stats)},
                   path / "samples.pt")
        torch.save(_cpu(self.params), path / "params.pt")
        if self.model.built_from is not None:  # a model that conditions on its training data needs it back
            torch.save([a.detach().cpu() for a in self.model.built_from], path / "built_from.pt")
        self.to_arviz().to_netcdf(str(path / "posterior.nc"))
        return path

    @classmethod
    def load(cls, path) -> Posterior:
        """Read a folder written by :meth:`save` (no training data needed, nothing unpickled)."""
        from .. import _registry

        path = Path(path)
        meta_file = path / "zoo.json"
        if not meta_file.is_file():
            raise ZooError(f"load_posterior: {path} holds no zoo.json; is it a folder written by "
                           "Posterior.save?")
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError as err:
            raise ZooError(f"load_posterior: {meta_file} is not valid JSON ({err}); the save is corrupt") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ZooError(f"load_posterior: {path} is not a zoo posterior of version {VERSION} "
                           f"(found format={meta.get('format')!r}, version={meta.get('version')!r})")
        try:
            stored = torch.load(path / "samples.pt", weights_only=True)
            params = torch.load(path / "params.pt", weights_only=True)
        except Exception as err:
            raise ZooError(f"load_posterior: cannot read the tensors in {path} ({err}); "
                           "the save is corrupt or incomplete") from None
        built_from = path / "built_from.pt"
        data = {"data": tuple(torch.load(built_from, weights_only=True))} if built_from.is_file() else {}
        model = _registry.load(meta["model"], **meta["config"], **data)
        if cls is Posterior:
            cls = posterior_class(model)
        sites = Sites({k: (tuple(s), e) for k, (s, e) in meta["sites"]["latent"].items()},
                      meta["sites"]["observed"], {k: tuple(s) for k, s in meta["sites"].get("local", {}).items()})
        return cls(model, stored["samples"], method=meta["method"], sites=sites,
                   sample_stats=stored["sample_stats"], loss=meta["loss"], params=params,
                   info=meta["info"], target_scale=meta["target_scale"], timings=meta["timings"],
                   options=meta["options"])

    def __repr__(self) -> str:
        return (f"Posterior({self.model.name}, method={self.method!r}, chains={self.num_chains}, "
                f"draws={self.num_draws})")


def posterior_class(model) -> type[Posterior]:
    """The Posterior subclass that fits ``model``: autoencoders get a GenerativePosterior."""
    if model.autoencoder is None:
        return Posterior
    from .generative import GenerativePosterior

    return GenerativePosterior


def _cpu(tensors: dict) -> dict:
    return {k: v.detach().cpu() for k, v in tensors.items()}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
