"""gp-exact: exact GP regression with priors on the kernel hyperparameters, for NUTS over them (the
fully Bayesian GP of GPyTorch's example), predicting through the GP conditional on the training data."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch

from .._data import training_arrays
from .._errors import ZooError
from .._model import Defaults, Display, ZooModel
from .._registry import register_model
from .gp import check_inputs
from .layers import strip_plate_slot

JITTER = 1e-5


class ExactGP:
    """y ~ N(0, s^2 k(X / l, X / l) + noise^2 I) with log-normal priors on l (one per input), s and noise.

    The kernel (RBF or Matern-5/2, as GPyTorch's) is applied to inputs divided by the sampled lengthscales, so
    a whole batch of hyperparameter draws runs as one vectorised pass. It is written here in tensor operations
    only: GPyTorch's kernels test their two inputs for equality, which a traced density cannot follow.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, kernel: str):
        self.x, self.y, self.kernel = x, y, kernel

    def hyperparameters(self, device):
        d = self.x.shape[1]
        lengthscale = pyro.sample("lengthscale", dist.LogNormal(torch.zeros(d, device=device), 1.0).to_event(1))
        outputscale = pyro.sample("outputscale", dist.LogNormal(torch.zeros((), device=device), 1.0))
        noise = pyro.sample("noise", dist.LogNormal(torch.full((), -2.0, device=device), 1.0))
        # drop the slot a vectorising plate leaves, so every draw broadcasts over points
        lengthscale = strip_plate_slot(lengthscale, 1).unsqueeze(-2)           # (..., 1, D)
        draws = lengthscale.shape[:-2]
        return lengthscale, outputscale.reshape(*draws, 1, 1), noise.reshape(*draws, 1)

    def covariance(self, a, b, lengthscale, outputscale):
        """s^2 k(a / l, b / l); when a is b, the distances on the diagonal are exactly 0."""
        return outputscale * unit_kernel(self.kernel, a / lengthscale, b / lengthscale, same=a is b)

    def model(self, x, y=None):
        """The marginal likelihood of the training targets: one joint Gaussian over all points."""
        lengthscale, outputscale, noise = self.hyperparameters(x.device)
        k = self.covariance(x, x, lengthscale, outputscale)
        k = k + (noise.unsqueeze(-1) ** 2 + JITTER) * torch.eye(x.shape[0], device=x.device)
        return pyro.sample("y", dist.MultivariateNormal(torch.zeros(x.shape[0], device=x.device), k), obs=y)

    def predictive(self, x, y=None):
        """New points given the training data: y* ~ N(mean*, var* + noise^2) independently per point."""
        lengthscale, outputscale, noise = self.hyperparameters(x.device)
        train = self.x.to(x.device)
        k = self.covariance(train, train, lengthscale, outputscale)
        chol = torch.linalg.cholesky(k + (noise.unsqueeze(-1) ** 2 + JITTER) * torch.eye(len(train), device=x.device))
        k_star = self.covariance(train, x, lengthscale, outputscale)                         # (..., n, m)
        a = torch.linalg.solve_triangular(chol, k_star, upper=False)
        alpha = torch.linalg.solve_triangular(chol, self.y.to(x.device).unsqueeze(-1), upper=False)
        mean = (a * alpha).sum(-2)
        var = (outputscale[..., 0] - a.pow(2).sum(-2)).clamp_min(1e-10)
        with pyro.plate("data", x.shape[0]) as idx:
            return pyro.sample("y", dist.Normal(mean[..., idx], (var + noise**2).sqrt()[..., idx]),
                               obs=None if y is None else y[idx])


def unit_kernel(kernel: str, a: torch.Tensor, b: torch.Tensor, same: bool = False) -> torch.Tensor:
    """The RBF or Matern-5/2 kernel at unit lengthscale and scale between the rows of a (..., n, D) and
    b (..., m, D), by |a|^2 + |b|^2 - 2 a.b as GPyTorch computes it (its diagonal set to 0 when a is b)."""
    d2 = (a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1).unsqueeze(-2) - 2 * a @ b.mT).clamp_min(0)
    if same:
        d2 = d2 * (1 - torch.eye(a.shape[-2], dtype=a.dtype, device=a.device))
    if kernel == "rbf":
        return torch.exp(-0.5 * d2)
    d = math.sqrt(5) * d2.clamp_min(1e-30).sqrt()
    return (1 + d + d**2 / 3) * torch.exp(-d)


@register_model("gp-exact", task="regression", family="gaussian-process",
                likelihood="y ~ N(0, s^2 k(x / l) + noise^2 I); l_d, s, noise ~ LogNormal",
                default_guide="mean-field", guides=("mean-field", "delta"),
                paper="Rasmussen & Williams 2006, ch. 2 and 5; GPyTorch, Fully Bayesian GPs with NUTS (example)",
                notes="for small data (the covariance is n x n per draw): nuts over the hyperparameters is the "
                      "intended backend; laplace and svi give their Gaussian / variational approximations.")
def gp_exact(*, data=None, kernel: str = "rbf") -> ZooModel:
    """Exact GP regression with ARD lengthscales; predictions condition on the training split in ``data``."""
    if data is None:
        raise ZooError("gp-exact: pass data= (the training split): predictions condition on it")
    if kernel not in ("rbf", "matern52"):
        raise ZooError(f"gp-exact: kernel must be 'rbf' or 'matern52', got {kernel!r}")
    x, y = training_arrays(data)
    x, y = x.float(), y.float()
    if x.dim() != 2 or y is None or y.shape != (x.shape[0],):
        raise ZooError(f"gp-exact: data must be (x (points, features), y (points,)), got x {tuple(x.shape)}")
    if x.shape[0] > 2000:
        raise ZooError(f"gp-exact: {x.shape[0]} training points make an n x n covariance per draw; "
                       "use svgp or dgp for more than 2,000")
    display = Display(summary_sites=["lengthscale", "outputscale", "noise"], dims={"lengthscale": ["input"]})
    # svi starts at the prior: on standardised data it does as well as from the MAP (yacht splits 0-2: test LL
    # 0.115, -0.005, 0.246 against 0.096, -0.008, 0.239) without the search (6-22 s), whose Hessian is rarely
    # positive definite (an irrelevant input's lengthscale is flat)
    defaults = Defaults(fit={"svi": {"init": "prior"}}, num_samples=200)
    return ExactGPModel(ExactGP(x, y, kernel), config={"kernel": kernel}, defaults=defaults, display=display,
                        vectorized=True)


class ExactGPModel(ZooModel):
    """An exact GP: fitted on the joint likelihood of its training targets, it predicts through the conditional
    on them, so it is rebuilt from its training split."""

    def __init__(self, gp: ExactGP, **kwargs):
        super().__init__(gp.model, **kwargs)
        self.gp = gp

    def validate(self, args):
        check_inputs("gp-exact", args, self.gp.x.shape[1])

    @property
    def predictive(self):
        return self.gp.predictive

    def rebuild_data(self):
        return self.gp.x, self.gp.y
