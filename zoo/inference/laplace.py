"""Laplace approximation: MAP, then a Gaussian at the mode in unconstrained coordinates."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide.initialization import InitMessenger

from .._errors import ZooError
from ._base import FitResult, check_positive, lr_gamma, register_backend
from ._progress import progress_bar

HESSIANS = ("full", "diag")
CURVATURES = ("exact", "fisher")


@register_backend
@dataclass
class Laplace:
    """Laplace approximation ``N(theta*, H^-1)`` over every latent site, unconstrained.

    Parameters
    ----------
    hessian : {"full", "diag"}
        Dense precision matrix, or its diagonal only.
    curvature : {"exact", "fisher"}
        Exact Hessian of the negative log joint, or the Fisher information of the likelihood
        (Monte Carlo over ``fisher_samples`` draws of y, positive semi-definite) plus the exact
        Hessian of the negative log prior. Networks need ``"fisher"``: their exact Hessian at a
        MAP is usually indefinite.
    tune_prior : bool
        Scale the precision of every Normal prior by the factor that maximises the Laplace
        estimate of the marginal likelihood (post-hoc, as in laplace-torch).
    prior_rounds : int
        With ``tune_prior``, rounds of (MAP under the current prior scale, then re-tune the scale);
        1 is post-hoc tuning, more move the MAP to the evidence-preferred prior.
    num_steps, lr, lr_decay : MAP by full-batch Adam with an exponential schedule.
    memory_limit_gb : float, optional
        Largest dense Hessian allowed; default a quarter of this machine's memory.
    """

    name: ClassVar[str] = "laplace"
    hessian: str = "full"
    curvature: str = "exact"
    tune_prior: bool = True
    prior_rounds: int = 1
    num_steps: int = 3000
    lr: float = 1e-2
    lr_decay: float = 0.1
    fisher_samples: int = 4
    memory_limit_gb: float | None = None

    def fit(self, zm, args, sites, *, num_samples, progress) -> FitResult:
        if self.hessian not in HESSIANS:
            raise ZooError(f"laplace: hessian must be one of {HESSIANS}, got {self.hessian!r}")
        if self.curvature not in CURVATURES:
            raise ZooError(f"laplace: curvature must be one of {CURVATURES}, got {self.curvature!r}")
        check_positive("laplace: num_steps", self.num_steps)
        check_positive("laplace: fisher_samples", self.fisher_samples)
        check_positive("laplace: prior_rounds", self.prior_rounds)
        joint = LogJoint(zm.model, args, sites, zm.init_loc_fn)
        if self.hessian == "full":
            self._check_memory(joint.size)
        theta, alpha, losses = joint.initial, 1.0, []
        for _ in range(self.prior_rounds if self.tune_prior else 1):
            theta, round_losses, info = self._map(joint, theta, alpha, progress)
            losses += round_losses
            h_lik = self._likelihood_curvature(joint, theta)
            h_normal = _curvature(lambda t: -joint.terms(t)[1], theta, self.hessian)
            h_other = _curvature(lambda t: -joint.terms(t)[2], theta, self.hessian)
            alpha, log_evidence = self._prior_scale(joint, theta, h_lik, h_normal, h_other)
            if "stopped" in info or "interrupted" in info:
                break
        precision = h_lik + alpha * h_normal + h_other
        draws = self._draw(theta, precision, num_samples)
        samples = {k: v.unsqueeze(0) for k, v in joint.constrain(draws).items()}
        info.update(hessian=self.hessian, curvature=self.curvature, prior_precision_scale=alpha,
                    log_marginal_likelihood=log_evidence, num_parameters=joint.size)
        params = {"laplace.loc": theta.detach(), "laplace.precision": precision.detach()}
        return FitResult(samples, loss=losses, params=params, info=info)

    def _check_memory(self, size: int) -> None:
        limit = self.memory_limit_gb
        if limit is None:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**30
        need = 4 * size * size * 8 / 2**30  # four dense float64 matrices at the peak
        if need > limit:
            raise ZooError(f"laplace: a full Hessian over {size:,} parameters needs about {need:.1f} GiB, "
                           f"more than the {limit:.1f} GiB allowed; use hessian='diag' "
                           "(or raise memory_limit_gb)")

    def _map(self, joint: LogJoint, start, alpha: float, progress: bool):
        theta = start.clone().requires_grad_(True)
        optim = torch.optim.Adam([theta], lr=self.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(optim, lr_gamma(self.lr_decay, self.num_steps))
        losses, info = [], {}
        bar = progress_bar(self.num_steps, "laplace MAP", progress)
        try:
            for step in range(self.num_steps):
                loss = -sum(joint.terms(theta, alpha)) / joint.num_points
                if not torch.isfinite(loss):
                    info["stopped"] = (f"laplace: the MAP loss became {loss.item()} at step {step}; "
                                       "kept the last finite state. Lower lr or standardise the data")
                    break
                optim.zero_grad()
                loss.backward()
                last = theta.detach().clone()
                optim.step()
                sched.step()
                losses.append(loss.item())
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.4g}")
                bar.update()
            else:
                last = theta.detach()
        except KeyboardInterrupt:
            info["interrupted"] = f"laplace: MAP interrupted at step {len(losses)} of {self.num_steps}"
            last = theta.detach()
        finally:
            bar.close()
        theta = last if losses else start
        window = max(len(losses) // 20, 1)
        if len(losses) >= 2 * window:
            before = sum(losses[-2 * window:-window]) / window
            after = sum(losses[-window:]) / window
            if before - after > 1e-3 * max(abs(after), 1.0):
                info.setdefault("warnings", []).append(
                    f"laplace: the MAP had not converged (loss still fell {before - after:.3g} per "
                    f"point over the last {window} steps); a Laplace fit around an unconverged MAP "
                    "is poor: raise num_steps")
        info["map_loss"] = losses[-1] if losses else float("nan")
        return theta.detach(), losses, info

    def _likelihood_curvature(self, joint, theta):
        if self.curvature == "exact":
            return _curvature(lambda t: -joint.terms(t)[0], theta, self.hessian)
        fisher = 0.0
        for _ in range(self.fisher_samples):
            y_sim = joint.simulate(theta)
            jac = torch.autograd.functional.jacobian(lambda t, y=y_sim: joint.pointwise(t, y), theta,
                                                     vectorize=True)
            fisher = fisher + (jac.T @ jac if self.hessian == "full" else (jac ** 2).sum(0))
        return fisher / self.fisher_samples

    def _prior_scale(self, joint, theta, h_lik, h_normal, h_other):
        """The prior-precision factor alpha maximising the Laplace evidence, and that evidence."""
        loglik, _, other = (t.item() for t in joint.terms(theta))

        def log_evidence(alpha):
            precision = (h_lik + alpha * h_normal + h_other).double()
            logdet = (torch.linalg.slogdet(precision) if self.hessian == "full"
                      else (torch.sign(precision).prod(), precision.abs().log().sum()))
            if logdet[0] <= 0:
                return -math.inf
            normal = joint.terms(theta, alpha)[1].item()
            return (loglik + normal + other + 0.5 * joint.size * math.log(2 * math.pi)
                    - 0.5 * logdet[1].item())

        grid = [10 ** (k / 10) for k in range(-30, 31)] if self.tune_prior and joint.has_normal else [1.0]
        alpha = max(grid, key=log_evidence)
        return alpha, log_evidence(alpha)

    def _draw(self, theta, precision, num_samples):
        eps = torch.randn(num_samples, theta.numel(), dtype=torch.float64, device=theta.device)
        if self.hessian == "diag":
            if (precision <= 0).any():
                raise _not_positive(int((precision <= 0).sum()), self.curvature)
            return (theta + eps / precision.double().sqrt()).float()
        chol, bad = torch.linalg.cholesky_ex(precision.double())
        if bad:
            negative = int((torch.linalg.eigvalsh(precision.double()) <= 0).sum())
            raise _not_positive(negative, self.curvature)
        # theta + L^-T eps has covariance (L L^T)^-1 = precision^-1
        offsets = torch.linalg.solve_triangular(chol.T, eps.T, upper=True).T
        return (theta + offsets).float()


def _not_positive(count: int, curvature: str) -> ZooError:
    hint = ("use curvature='fisher' (positive semi-definite), or train the MAP longer (num_steps)"
            if curvature == "exact" else "train the MAP longer (num_steps) or strengthen the prior")
    return ZooError(f"laplace: the {curvature} Hessian at the MAP is not positive definite "
                    f"({count} non-positive eigenvalues); {hint}")


def _curvature(fn, theta, structure: str, chunk: int = 256) -> torch.Tensor:
    """Exact Hessian of ``fn`` at ``theta``: dense, or its diagonal, from chunks of rows."""
    theta = theta.detach().requires_grad_(True)
    size = theta.numel()
    value = fn(theta)
    grad = torch.autograd.grad(value, theta, create_graph=True)[0] if value.requires_grad else None
    if grad is None or not grad.requires_grad:  # fn is constant or linear in theta
        return torch.zeros((size, size) if structure == "full" else size, device=theta.device)
    rows = []
    for start in range(0, size, chunk):
        idx = torch.arange(start, min(start + chunk, size), device=theta.device)
        basis = torch.zeros(len(idx), size, device=theta.device)
        basis[torch.arange(len(idx)), idx] = 1.0
        block = torch.autograd.grad(grad, theta, basis, retain_graph=True, is_grads_batched=True,
                                    allow_unused=True)[0]
        block = torch.zeros_like(basis) if block is None else block.detach()
        rows.append(block if structure == "full" else block[torch.arange(len(idx)), idx])
    return torch.cat(rows, 0)


def _normal_base(fn):
    """The Normal inside ``fn`` (through Independent wrappers), else None."""
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn if type(fn) is dist.Normal else None


class LogJoint:
    """The model's log joint as a function of one flat vector of unconstrained latents."""

    def __init__(self, model, args, sites, init_loc_fn):
        self.model, self.args, self.sites = model, args, sites
        with torch.no_grad():
            trace = poutine.trace(InitMessenger(init_loc_fn)(model)).get_trace(*args)
        self.names = list(sites.latent)
        self.transforms = {n: biject_to(trace.nodes[n]["fn"].support) for n in self.names}
        self.shapes = {n: trace.nodes[n]["value"].shape for n in self.names}
        self.initial = torch.cat([self.transforms[n].inv(trace.nodes[n]["value"]).reshape(-1)
                                  for n in self.names]).detach()
        self.size = self.initial.numel()
        self.num_points = max(args[0].shape[0], 1)
        self.has_normal = any(_normal_base(trace.nodes[n]["fn"]) is not None for n in self.names)

    def _split(self, theta):
        out, start = {}, 0
        for n in self.names:
            size = math.prod(self.shapes[n])
            out[n] = theta[..., start:start + size].reshape(theta.shape[:-1] + self.shapes[n])
            start += size
        return out

    def constrain(self, theta) -> dict[str, torch.Tensor]:
        return {n: self.transforms[n](v) for n, v in self._split(theta).items()}

    def _trace(self, theta, args):
        unconstrained = self._split(theta)
        values = {n: self.transforms[n](v) for n, v in unconstrained.items()}
        logdet = sum(self.transforms[n].log_abs_det_jacobian(unconstrained[n], values[n]).sum()
                     for n in self.names)
        trace = poutine.trace(poutine.condition(self.model, values)).get_trace(*args)
        return trace, logdet

    def terms(self, theta, alpha: float = 1.0):
        """(log likelihood, log prior of Normal sites scaled by alpha, other log prior + log|J|)."""
        trace, logdet = self._trace(theta, self.args)
        loglik = sum(trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]).sum()
                     for n in self.sites.observed)
        normal, other = 0.0, logdet
        for n in self.names:
            fn, value = trace.nodes[n]["fn"], trace.nodes[n]["value"]
            base = _normal_base(fn)
            if base is None:
                other = other + fn.log_prob(value).sum()
            else:
                scaled = dist.Normal(base.loc, base.scale / math.sqrt(alpha))
                normal = normal + scaled.log_prob(value).sum()
        return loglik, torch.as_tensor(normal), other

    def pointwise(self, theta, y):
        """Log likelihood per data point with observations ``y`` in place of the data's."""
        trace, _ = self._trace(theta, (*self.args[:-1], y))
        return sum(trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]) for n in self.sites.observed)

    def simulate(self, theta):
        """Observations drawn from the model at ``theta`` (for the Monte Carlo Fisher)."""
        with torch.no_grad():
            trace, _ = self._trace(theta, (*self.args[:-1], None))
        (name,) = self.sites.observed
        return trace.nodes[name]["value"]
