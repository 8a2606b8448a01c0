"""Per-example weight noise: one weight sample per data point while the ELBO is estimated.

A weight guide q(W) is usually sampled once per step and shared by the whole minibatch, so the
gradient of the expected log likelihood is noisy. Drawing an independent W ~ q per example is an
unbiased estimate of the same ELBO with far less variance (Kingma et al. 2015, local
reparameterisation; Wen et al. 2018, flipout; standard per-example dropout masks for MC
dropout). Guides register each weight they sample with its q; the layer ops in ``layers`` look the
weight up and, inside :func:`per_example_noise`, compute their output under per-example noise.
Outside it (prediction, Laplace, NUTS) the same ops use the sampled weights as they are.

The noise is drawn once per example and weight and then reused for every later use of that weight
in the same step, so a recurrent net sees one weight sample per sequence, tied across time
(Gal & Ghahramani 2016).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

_ACTIVE: list[dict] = []  # per step: id(weight) -> WeightNoise, and drawn_once's draws


@dataclass
class WeightNoise:
    """How a sampled weight ``value`` came about: ``kind`` "normal" (loc, scale) or "dropout" (loc, keep)."""

    value: torch.Tensor
    kind: str
    loc: torch.Tensor
    scale: torch.Tensor | None = None
    keep: float = 1.0
    _cache: dict = field(default_factory=dict)

    def per_example(self, key: str, shape, draw) -> torch.Tensor:
        """Noise of ``shape`` drawn by ``draw(shape)`` once per step and reused afterwards."""
        cached = self._cache.get(key)
        if cached is None or cached.shape != torch.Size(shape):
            cached = self._cache[key] = draw(shape)
        return cached


@contextmanager
def per_example_noise():
    """Layers use per-example weight noise from their guide's q while this block runs."""
    _ACTIVE.append({})
    try:
        yield
    finally:
        _ACTIVE.pop()


def fitting() -> bool:
    """True while SVI estimates the ELBO for a training step (also when a guide may corrupt its input)."""
    return bool(_ACTIVE)


def drawn_once(key: str, draw: Callable[[], torch.Tensor]) -> torch.Tensor:
    """While fitting (:func:`fitting`): ``draw()`` on the step's first call with ``key``, the same tensor on every
    later call of the step, so that a guide and its model see one draw."""
    step = _ACTIVE[-1]
    if key not in step:
        step[key] = draw()
    return step[key]


def register(value: torch.Tensor, kind: str, loc: torch.Tensor, scale=None, keep: float = 1.0) -> None:
    """Record that guide weight ``value`` was drawn from q = Normal(loc, scale) or a dropout of loc."""
    if _ACTIVE:
        _ACTIVE[-1][id(value)] = WeightNoise(value, kind, loc, scale, keep)


def alias(view: torch.Tensor, value: torch.Tensor) -> None:
    """``view`` of a registered weight ``value`` (its plate slot squeezed) carries the same q."""
    entry = _ACTIVE[-1].get(id(value)) if _ACTIVE else None
    if entry is not None and entry.value is value:
        _ACTIVE[-1][id(view)] = WeightNoise(view, entry.kind, entry.loc, entry.scale, entry.keep, entry._cache)


def lookup(value: torch.Tensor) -> WeightNoise | None:
    """The registered q of weight ``value`` when per-example noise is on, else None."""
    if not _ACTIVE:
        return None
    entry = _ACTIVE[-1].get(id(value))
    return entry if entry is not None and entry.value is value else None


def signs(shape, device) -> torch.Tensor:
    return torch.randint(0, 2, shape, device=device).mul_(2).sub_(1).float()


def mask(shape, keep: float, device) -> torch.Tensor:
    return torch.bernoulli(torch.full(shape, keep, device=device)) / keep
