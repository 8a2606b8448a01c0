"""Running a model at many posterior draws at once: by plate broadcasting when its body allows it,
by ``torch.func.vmap`` otherwise, by a loop over draws last. The choice is checked once per model."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from .._errors import ZooError
from .sites import Sites, is_deterministic, is_sample, on_points

PATHS = ("plate", "vmap", "loop")
# a per-draw output of the vectorised run must match the single-draw runs to this
RTOL, ATOL = 1e-4, 1e-4

# extract(trace, reduce) -> {key: tensor}; reduce(t) sums a log density over every dim but the draws'
Extract = Callable[[poutine.Trace, Callable], dict]


class _SampleWithoutRsample(Messenger):
    """Draws unobserved sites with ``fn.sample()``: inside vmap, ``rsample`` fills an unbatched
    tensor in place, which vmap cannot randomise per draw."""

    def _pyro_sample(self, msg):
        if msg["value"] is None and not msg["is_observed"]:
            msg["value"] = msg["fn"].sample()


def plate_values(draws: dict, sites: Sites, num: int) -> dict:
    """Each draw ``(S, *shape)`` as ``(S, 1..., *shape)``: its batch dims line up with a plate of draws at
    ``dim=-max_plate_nesting - 1``, left of every plate of the model."""
    mpn = sites.max_plate_nesting
    values = {}
    for name, value in draws.items():
        shape, event_dim = sites.latent[name]
        values[name] = value.reshape(num, *([1] * (mpn - (len(shape) - event_dim))), *shape)
    return values


class DrawRunner:
    """``run(draws, args, extract)``: ``extract`` applied to the model conditioned on each draw.

    ``draws`` maps latent sites to tensors (S, *shape). The result maps each key of ``extract`` to a
    tensor (S, *shape of that output at one draw), whichever path computed it.
    """

    def __init__(self, model: Callable, sites: Sites, path: str = "plate"):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.model, self.sites, self.path = model, sites, path

    def run(self, draws: dict, args: tuple, extract: Extract, indices=None, shapes=None) -> dict[str, torch.Tensor]:
        """``shapes``: the shape of each output at one draw, when known (else one single-draw run finds it)."""
        num = next(iter(draws.values())).shape[0] if draws else 1
        if num == 1:  # one draw (a sampler's potential, a MAP step): no batching machinery at all
            out = self._single({k: v[0] for k, v in draws.items()}, args, extract, indices)
            return {k: v.unsqueeze(0) for k, v in out.items()}
        if self.path == "plate":
            return self._plate(draws, num, args, extract, indices, shapes)
        if self.path == "vmap":
            try:
                return self._vmap(draws, args, extract, indices)
            except Exception:  # e.g. a distribution that vmap cannot sample: the loop is always right
                return self._loop(draws, num, args, extract, indices)
        return self._loop(draws, num, args, extract, indices)

    def _single(self, draw: dict, args, extract, indices):
        trace = poutine.trace(on_points(poutine.condition(self.model, draw), indices)).get_trace(*args)
        return extract(trace, lambda t: t.sum())

    def _loop(self, draws, num, args, extract, indices):
        outs = [self._single({k: v[i] for k, v in draws.items()}, args, extract, indices) for i in range(num)]
        return {k: torch.stack([o[k] for o in outs]) for k in outs[0]}

    def _vmap(self, draws, args, extract, indices):
        def one(draw):
            with pyro.validation_enabled(False), _SampleWithoutRsample():
                return self._single(draw, args, extract, indices)

        return torch.func.vmap(one, randomness="different")(draws)

    def _plate(self, draws, num, args, extract, indices, shapes=None):
        mpn = self.sites.max_plate_nesting

        def reduce(t):
            t = t.reshape(t.shape[:max(t.dim() - mpn, 0)] + (-1,)).sum(-1)
            return t.expand(num) if t.dim() == 0 else t.reshape(num)

        conditioned = on_points(poutine.condition(self.model, plate_values(draws, self.sites, num)), indices)
        with pyro.plate("_draws", num, dim=-mpn - 1):
            trace = poutine.trace(conditioned).get_trace(*args)
        out = extract(trace, reduce)
        if shapes is None:  # the shape of each output at one draw, from a single-draw run (cheap next to S)
            single = self._single({k: v[0] for k, v in draws.items()}, args, extract, indices) if draws else out
            shapes = {k: v.shape for k, v in single.items()}
        return {k: _per_draw(v, shapes[k], num, k) for k, v in out.items()}


def _per_draw(value: torch.Tensor, shape: torch.Size, num: int, key: str) -> torch.Tensor:
    size = math.prod(shape)
    if value.numel() == num * size:
        return value.reshape(num, *shape)
    if value.numel() == size:  # the same at every draw
        return value.reshape(shape).expand(num, *shape)
    raise RuntimeError(f"vectorised output {key!r} has shape {tuple(value.shape)}, not {num} x {tuple(shape)}")


def log_joint(trace: poutine.Trace, reduce: Callable) -> dict[str, torch.Tensor]:
    """The log joint density of a trace (every sample site with its scale, pyro.factor included)."""
    total = 0.0
    for site in trace.nodes.values():
        if is_sample(site) and not is_deterministic(site):
            total = total + reduce(site["scale"] * site["fn"].log_prob(site["value"]))
    return {"log_joint": torch.as_tensor(total)}


def observed_log_probs(names) -> Extract:
    """Pointwise log-probabilities of the observed sites ``names``."""

    def extract(trace, reduce):
        return {n: trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]) for n in names}

    return extract


def choose_path(model: Callable, sites: Sites, args: tuple, draws: dict, indices=None) -> str:
    """The fastest path whose log densities at ``draws`` (two or more) match single-draw runs."""

    def extract(trace, reduce):
        return {**log_joint(trace, reduce), **observed_log_probs(sites.observed)(trace, reduce)}

    num = next(iter(draws.values())).shape[0]
    with torch.no_grad():
        try:
            expected = DrawRunner(model, sites, "loop")._loop(draws, num, args, extract, indices)
        except Exception as err:
            raise ZooError(f"the model cannot be run with its latents set to one draw ({type(err).__name__}: "
                           f"{err}); a model for zoo must accept any value of its latent sites (e.g. compute "
                           "with the sampled value, not a fixed tensor of the same name)") from err
        for path in ("plate", "vmap"):
            runner = DrawRunner(model, sites, path)
            try:
                with warnings.catch_warnings():  # what a trial run warns of (x.T on a batch) is not the user's
                    warnings.simplefilter("ignore")
                    got = (runner._plate(draws, num, args, extract, indices, None) if path == "plate"
                           else runner._vmap(draws, args, extract, indices))
            except Exception:  # this path cannot run the model: try the next
                continue
            if all(got[k].shape == e.shape and torch.allclose(got[k], e, rtol=RTOL, atol=ATOL)
                   for k, e in expected.items()):
                return path
    return "loop"
