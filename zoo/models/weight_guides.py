"""Guides over a network's weight sites: mean-field Gaussian and MC dropout, with per-example noise.

Both register every weight they sample (see ``noise``), so the layer ops can draw an independent
weight per example while the ELBO is estimated: local reparameterisation or flipout for the
Gaussian, per-example Bernoulli masks for dropout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .. import _noise as noise
from .._point_masses import point_mass

# Laplace for big networks: a full Gaussian over the output layer around a minibatch MAP
LAST_LAYER_LAPLACE = {"subset": "last-layer", "hessian": "full", "curvature": "fisher", "batch_size": 256,
                      "lr": 1e-3, "optimizer": "adam"}


@dataclass(frozen=True)
class WeightSite:
    """A weight or bias site: ``name``, ``shape`` (out, in, ...), and its layer's ``fan_in``.

    ``dropout`` is the MC dropout probability on the site's input units (dim 1: input features of a
    dense layer, input channels of a convolution, input or hidden units of a recurrent cell).
    ``point`` sites (e.g. a word embedding) get a point mass under every guide: MAP under the prior.
    Weights start at N(0, gain / fan_in) (He for ReLU nets; gain 1 is LeCun), biases at 0.
    """

    name: str
    shape: tuple[int, ...]
    fan_in: int
    dropout: float = 0.0
    point: bool = False
    gain: float = 2.0

    def init(self, device) -> torch.Tensor:
        if len(self.shape) == 1:
            return torch.zeros(self.shape, device=device)
        return torch.randn(self.shape, device=device) * math.sqrt(self.gain / self.fan_in)


def _device(args):
    return next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))


def point_masses(prefix: str, extra_sites: dict, device) -> None:
    """MAP point masses for non-weight sites: ``extra_sites`` maps name -> (init, constraint)."""
    for name, (init, constraint) in extra_sites.items():
        value = pyro.param(f"{prefix}.{name}", lambda i=init: torch.as_tensor(i, device=device), constraint=constraint)
        pyro.sample(name, point_mass(value))


def mean_field_guide(prefix: str, sites: list[WeightSite], init_scale: float = 1e-3, extra_sites=None):
    """q(W) = prod N(loc, scale^2) over every entry (Bayes by Backprop, Blundell et al. 2015)."""

    def guide(*args, **kwargs):
        device = _device(args)
        for site in sites:
            loc = pyro.param(f"{prefix}.{site.name}.loc", lambda s=site: s.init(device))
            if site.point:
                pyro.sample(site.name, point_mass(loc, len(site.shape)))
                continue
            scale = pyro.param(f"{prefix}.{site.name}.scale",
                               lambda s=site: torch.full(s.shape, init_scale, device=device),
                               constraint=constraints.softplus_positive)
            value = pyro.sample(site.name, dist.Normal(loc, scale).to_event(len(site.shape)))
            noise.register(value, "normal", loc, scale)
        point_masses(prefix, extra_sites or {}, device)

    return guide


def mc_dropout_guide(prefix: str, sites: list[WeightSite], extra_sites=None):
    """Gal & Ghahramani's MC dropout: W = M diag(z) / (1 - p), z ~ Bernoulli(1 - p) per input unit.

    Sites with ``dropout == 0`` (biases, the first layer) are point masses at M. Under the ELBO
    the Gaussian log prior at the masked weights is, in expectation, the L2 term that
    approximates KL(q || p); log q of a point mass is 0, so the objective is NLL + L2.
    """
    for site in sites:
        if not 0.0 <= site.dropout < 1.0:
            raise ValueError(f"dropout p of {site.name} must be in [0, 1), got {site.dropout}")

    def guide(*args, **kwargs):
        device = _device(args)
        for site in sites:
            loc = pyro.param(f"{prefix}.{site.name}", lambda s=site: s.init(device))
            if site.dropout == 0:
                pyro.sample(site.name, point_mass(loc, len(site.shape)))
                continue
            keep = 1.0 - site.dropout
            units = (site.shape[1], *[1] * (len(site.shape) - 2))
            z = pyro.sample(f"{prefix}.{site.name}.mask",
                            dist.Bernoulli(torch.full(units, keep, device=device)).to_event(len(units)),
                            infer={"is_auxiliary": True})
            value = pyro.sample(site.name, point_mass(loc * z.unsqueeze(-len(site.shape)) / keep, len(site.shape)))
            noise.register(value, "dropout", loc, keep=keep)
        point_masses(prefix, extra_sites or {}, device)

    return guide


def with_dropout(sites: list[WeightSite], rates: dict[str, float]) -> list[WeightSite]:
    """``sites`` with the MC dropout rate of each site named in ``rates`` (0 for the others)."""
    return [replace(site, dropout=rates.get(site.name, 0.0)) for site in sites]


def init_at(sites: list[WeightSite], extra: dict | None = None):
    """``init_loc_fn`` for autoguides (the MAP twins): each weight site starts at its own init,
    the sites in ``extra`` (name -> value) at that value."""
    by_name = {site.name: site for site in sites}
    extra = extra or {}

    def init(site):
        device = site["fn"].mean.device
        if site["name"] in extra:
            return torch.as_tensor(extra[site["name"]], device=device)
        return by_name[site["name"]].init(device)

    return init
