"""Bayesian building blocks shared by model families: batched MLP forward, weight sites, dropout guides."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

from .. import _noise as noise
from .._weight_prior import WeightPrior

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def strip_plate_slot(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Drop the size-1 slot a vectorising plate leaves between draws and a global site's event.

    Under ``pyro.plate("_draws", S, dim=-2)`` (Predictive, vectorised particles) a weight of
    event shape ``(o, i)`` arrives as ``(S, 1, o, i)``; the network wants ``(S, o, i)`` so that its
    outputs come out as ``(S, n, ...)`` with ``n`` on the data plate's dim -1. The squeezed weight keeps the
    per-example noise its guide registered (vectorised ELBO particles).
    """
    if value.dim() <= event_dim:
        return value
    squeezed = value.squeeze(-event_dim - 1)
    noise.alias(squeezed, value)
    return squeezed


def layer_sizes(in_features: int, hidden, out_features: int) -> list[tuple[int, int]]:
    sizes = [in_features, *hidden, out_features]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


def sample_weights(sizes, prior_scale: float, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sample ``w{i}`` (out, in) and ``b{i}`` (out,) from N(0, prior_scale^2) for every layer."""
    return [(weight(f"w{i}", (n_out, n_in), prior_scale, device), weight(f"b{i}", (n_out,), prior_scale, device))
            for i, (n_in, n_out) in enumerate(sizes)]


def mlp_forward(x: torch.Tensor, layers, activation) -> torch.Tensor:
    """``x`` (n, in) through weights with any leading draw dims; returns (*draws, n, out)."""
    h = x
    for i, (w, b) in enumerate(layers):
        h = h @ w.transpose(-1, -2) + b.unsqueeze(-2)
        if i < len(layers) - 1:
            h = activation(h)
    return h


def lecun_normal(shape, fan_in: int, device=None) -> torch.Tensor:
    return torch.randn(shape, device=device) / math.sqrt(fan_in)


def weight(name: str, shape, prior_scale: float, device) -> torch.Tensor:
    """A weight site ``name`` with an N(0, prior_scale^2) prior on each entry, plate slot removed."""
    return strip_plate_slot(pyro.sample(name, WeightPrior(shape, prior_scale, device)), len(shape))


def dense(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None, tied: bool = False) -> torch.Tensor:
    """``x @ w.T + b`` for weights with any leading draw dims, under per-example noise when it is on.

    Mean-field weights use the local reparameterisation (the exact per-example output Gaussian), or
    flipout when ``tied`` (the same per-example weight sample at every use, as a recurrence needs).
    Weights with leading draw dims (vectorised ELBO particles) get noise per draw and example.
    """
    entry = noise.lookup(w)
    out = x @ w.transpose(-1, -2) if entry is None else _noisy_dense(x, w, entry, tied)
    return out if b is None else out + b.unsqueeze(-2)


def _noisy_dense(x: torch.Tensor, w: torch.Tensor, entry, tied: bool) -> torch.Tensor:
    inputs = torch.broadcast_shapes(x.shape, (*w.shape[:-2], 1, 1))
    outputs = (*inputs[:-1], w.shape[-2])
    if entry.kind == "dropout":
        return (x * entry.per_example("in", inputs, lambda s: noise.mask(s, entry.keep, x.device))) @ entry.loc.T
    if tied:
        s_in = entry.per_example("in", inputs, lambda s: noise.signs(s, x.device))
        s_out = entry.per_example("out", outputs, lambda s: noise.signs(s, x.device))
        return x @ entry.loc.T + ((x * s_in) @ (w - entry.loc).transpose(-1, -2)) * s_out
    mean, var = x @ entry.loc.T, (x * x) @ (entry.scale * entry.scale).T
    return mean + var.clamp_min(1e-16).sqrt() * torch.randn(outputs, device=x.device)


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2-D convolution of images ``(*draws, n, C, H, W)`` by kernels ``(*draws, O, C, k, k)``.

    Draws of the kernels run as one grouped convolution. Under per-example noise, dropout masks
    whole input channels of each example and mean-field kernels use flipout (Wen et al. 2018); kernels with
    draw dims (vectorised ELBO particles) are used as sampled, without per-example noise.
    """
    entry = noise.lookup(w)
    if entry is not None and x.dim() == 4 and w.dim() == 4:
        n, c = x.shape[:2]
        if entry.kind == "dropout":
            z = entry.per_example("in", (n, c, 1, 1), lambda s: noise.mask(s, entry.keep, x.device))
            return F.conv2d(x * z, entry.loc, b)
        s_in = entry.per_example("in", (n, c, 1, 1), lambda s: noise.signs(s, x.device))
        s_out = entry.per_example("out", (n, w.shape[0], 1, 1), lambda s: noise.signs(s, x.device))
        return F.conv2d(x, entry.loc, b) + F.conv2d(x * s_in, w - entry.loc) * s_out
    if w.dim() == 4:
        out = F.conv2d(x.reshape(-1, *x.shape[-3:]), w, b)
        return out.reshape(*x.shape[:-3], *out.shape[-3:])
    draws = w.shape[0]
    x = x.expand(draws, *x.shape[-4:]) if x.dim() == 5 else x.expand(draws, *x.shape)
    n, c, height, width = x.shape[1:]
    grouped = x.transpose(0, 1).reshape(n, draws * c, height, width)
    out = F.conv2d(grouped, w.reshape(-1, *w.shape[2:]), b.reshape(-1), groups=draws)
    return out.reshape(n, draws, w.shape[1], *out.shape[-2:]).transpose(0, 1)


def max_pool(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """Max pooling over the last two dims of ``(..., C, H, W)``."""
    out = F.max_pool2d(x.reshape(-1, *x.shape[-3:]), size)
    return out.reshape(*x.shape[:-3], *out.shape[-3:])


def observe(out: torch.Tensor, y) -> torch.Tensor:
    """The categorical likelihood site ``y`` of a network's output, ``logits = out`` kept as deterministic
    (regression networks observe through :mod:`zoo.models.likelihoods`)."""
    logits = pyro.deterministic("logits", out, event_dim=1)
    return pyro.sample("y", dist.Categorical(logits=logits), obs=y)
