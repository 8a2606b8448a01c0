"""Corruption processes C(x) for denoising autoencoders (Vincent et al. 2010, section 4.2).

Each takes points ``x`` (n, ...) and returns a corrupted copy of the same shape, counting fractions over
all of a point's entries; a fresh corruption is drawn at every call, so every training step sees new noise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from .._errors import ZooError


def gaussian(x: torch.Tensor, std: float) -> torch.Tensor:
    """Additive isotropic Gaussian noise: x + N(0, std^2)."""
    return x + std * torch.randn_like(x)


def _chosen(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """A mask picking exactly round(fraction * entries) entries of each point, at random."""
    flat = x.reshape(x.shape[0], -1)
    ranks = torch.rand_like(flat).argsort(-1).argsort(-1)
    return (ranks < round(fraction * flat.shape[1])).reshape(x.shape)


def masking(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Masking noise: a fraction of each point's entries, chosen at random, forced to 0."""
    return x.masked_fill(_chosen(x, fraction), 0.0)


def salt_and_pepper(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Salt-and-pepper noise: a fraction of each point's entries set to 0 or 1 with equal probability."""
    coin = torch.bernoulli(torch.full_like(x, 0.5))
    return torch.where(_chosen(x, fraction), coin, x)


CORRUPTIONS = {"gaussian": gaussian, "masking": masking, "salt-and-pepper": salt_and_pepper}


def corruption(kind: str, level: float) -> Callable | None:
    """The corruption ``kind`` at ``level`` (std for gaussian, fraction otherwise); None for "none"."""
    if kind == "none":
        return None
    if kind not in CORRUPTIONS:
        raise ZooError(f"corruption must be 'none' or one of {sorted(CORRUPTIONS)}, got {kind!r}")
    if kind == "gaussian" and not level > 0:
        raise ZooError(f"corruption 'gaussian' needs level (the noise std) > 0, got {level}")
    if kind != "gaussian" and not 0 < level < 1:
        raise ZooError(f"corruption {kind!r} needs level (the fraction corrupted) in (0, 1), got {level}")
    return partial(CORRUPTIONS[kind], **({"std": level} if kind == "gaussian" else {"fraction": level}))
