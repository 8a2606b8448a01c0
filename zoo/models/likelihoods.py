"""The likelihoods of the regression networks (``bnn``, ``bayes-lstm-regressor``): which global noise sites
the model samples, how many outputs the network needs, and what the output means.

- ``"normal"``: ``y ~ Normal(f, precision^-1/2)``, ``precision ~ Gamma(a, b)`` (or a fixed ``noise_scale``).
- ``"heteroscedastic"``: a mean and a scale head, ``y ~ Normal(f[0], softplus(f[1]) + 1e-3)``: the noise
  follows x.
- ``"student-t"``: ``y ~ StudentT(2 + nu, f, precision^-1/2)`` with ``nu ~ Gamma(2, 0.1)`` (Juarez & Steel
  2010), heavy tails learned from the data; 2 + nu keeps the predictive variance finite.

The network's output is recorded as the deterministic site ``f`` (both heads where there are two): what
Laplace's linearised predictive expands.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch.distributions import constraints

from .._errors import ZooError

LIKELIHOODS = ("normal", "heteroscedastic", "student-t")
MIN_SCALE = 1e-3  # the scale head's floor: a point fitted exactly keeps a finite density
DF_PRIOR = (2.0, 0.1)
DF_OFFSET = 2.0


@dataclass(frozen=True)
class RegressionLikelihood:
    kind: str = "normal"
    precision_prior: tuple = (1.0, 0.01)
    noise_scale: float | None = None

    def __post_init__(self):
        if self.kind not in LIKELIHOODS:
            raise ZooError(f"likelihood must be one of {LIKELIHOODS}, got {self.kind!r}")
        if self.kind == "heteroscedastic" and self.noise_scale is not None:
            raise ZooError("likelihood='heteroscedastic' learns the noise from x: drop noise_scale")

    @property
    def outputs(self) -> int:
        """Network outputs per point."""
        return 2 if self.kind == "heteroscedastic" else 1

    @property
    def noise_sites(self) -> dict[str, tuple[float, object]]:
        """The global noise latents, name -> (a start for guides, support)."""
        sites = {}
        if self.kind != "heteroscedastic" and self.noise_scale is None:
            sites["precision"] = (10.0, constraints.positive)
        if self.kind == "student-t":
            sites["nu"] = (10.0, constraints.positive)
        return sites

    def sample_noise(self, device) -> dict[str, torch.Tensor]:
        """The noise latents, sampled outside the data plate: the Normal's scale and Student-t's df."""
        noise = {}
        if self.kind == "heteroscedastic":
            return noise
        if self.noise_scale is None:
            a, b = (torch.tensor(float(v), device=device) for v in self.precision_prior)
            noise["scale"] = pyro.sample("precision", dist.Gamma(a, b)).rsqrt()
        else:
            noise["scale"] = torch.tensor(float(self.noise_scale), device=device)
        if self.kind == "student-t":
            a, b = (torch.tensor(v, device=device) for v in DF_PRIOR)
            noise["df"] = DF_OFFSET + pyro.sample("nu", dist.Gamma(a, b))
        return noise

    def observe(self, out: torch.Tensor, y, noise: dict) -> torch.Tensor:
        """The site ``y`` for the network's output ``out`` (..., points, outputs), inside the data plate."""
        if self.kind == "heteroscedastic":
            f = pyro.deterministic("f", out, event_dim=1)
            return pyro.sample("y", dist.Normal(f[..., 0], F.softplus(f[..., 1]) + MIN_SCALE), obs=y)
        f = pyro.deterministic("f", out[..., 0], event_dim=0)  # one per point: the default event_dim (all its
        # dims) would broadcast the Delta against the data plate, (N, C, N) tensors in every log density
        if self.kind == "student-t":
            return pyro.sample("y", dist.StudentT(noise["df"], f, noise["scale"]), obs=y)
        return pyro.sample("y", dist.Normal(f, noise["scale"]), obs=y)
