"""Bayesian building blocks shared by model families: batched MLP forward, weight sites, dropout guides."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F

ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu}


def strip_plate_slot(value: torch.Tensor, event_dim: int) -> torch.Tensor:
    """Drop the size-1 slot a vectorising plate leaves between draws and a global site's event.

    Under ``pyro.plate("_draws", S, dim=-2)`` (Predictive, vectorised particles) a weight of
    event shape ``(o, i)`` arrives as ``(S, 1, o, i)``; the network wants ``(S, o, i)`` so that its
    outputs come out as ``(S, n, ...)`` with ``n`` on the data plate's dim -1.
    """
    return value.squeeze(-event_dim - 1) if value.dim() > event_dim else value


def layer_sizes(in_features: int, hidden, out_features: int) -> list[tuple[int, int]]:
    sizes = [in_features, *hidden, out_features]
    return list(zip(sizes[:-1], sizes[1:], strict=True))


def sample_weights(sizes, prior_scale: float, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Sample ``w{i}`` (out, in) and ``b{i}`` (out,) from N(0, prior_scale^2) for every layer."""
    zero = torch.zeros((), device=device)
    layers = []
    for i, (n_in, n_out) in enumerate(sizes):
        prior = dist.Normal(zero, prior_scale)
        w = pyro.sample(f"w{i}", prior.expand([n_out, n_in]).to_event(2))
        b = pyro.sample(f"b{i}", prior.expand([n_out]).to_event(1))
        layers.append((strip_plate_slot(w, 2), strip_plate_slot(b, 1)))
    return layers


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


def mc_dropout_guide(name: str, sizes, p: float, extra_sites=None):
    """Gal & Ghahramani's MC dropout as a variational family over MLP weights.

    q(W_i) puts W_i = M_i diag(z_i) / (1 - p) with z_ij ~ Bernoulli(1 - p) masking the input units
    of layer i; biases and ``extra_sites`` (name -> (init, constraint)) are point masses. Under the
    ELBO the Gaussian log prior evaluated at the masked weights is, in expectation, the L2 term
    that approximates KL(q || p); log q of a point mass is 0, so the objective is NLL + L2.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout p must be in [0, 1), got {p}")
    keep = 1.0 - p
    extra_sites = extra_sites or {}

    def guide(x, *args, **kwargs):
        for i, (n_in, n_out) in enumerate(sizes):
            m = pyro.param(f"{name}.w{i}", lambda: lecun_normal((n_out, n_in), n_in, x.device))
            bias = pyro.param(f"{name}.b{i}", lambda: torch.zeros(n_out, device=x.device))
            mask = pyro.sample(
                f"{name}.mask{i}", dist.Bernoulli(torch.full((n_in,), keep, device=x.device)).to_event(1),
                infer={"is_auxiliary": True},
            )
            pyro.sample(f"w{i}", dist.Delta(m * mask.unsqueeze(-2) / keep, event_dim=2))
            pyro.sample(f"b{i}", dist.Delta(bias, event_dim=1))
        for site, (init, constraint) in extra_sites.items():
            value = pyro.param(f"{name}.{site}", lambda: torch.as_tensor(init, device=x.device),
                               constraint=constraint)
            pyro.sample(site, dist.Delta(value))

    return guide
