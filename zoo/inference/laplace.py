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
from ._base import FitResult, MinibatchIndices, check_positive, lr_gamma, register_backend
from ._progress import progress_bar

HESSIANS = ("full", "diag")
CURVATURES = ("exact", "fisher")
SUBSETS = ("all", "last-layer")


@register_backend
@dataclass
class Laplace:
    """Laplace approximation ``N(theta*, H^-1)`` over the latent sites, unconstrained.

    Parameters
    ----------
    hessian : {"full", "diag"}
        Dense precision matrix, or its diagonal only.
    curvature : {"exact", "fisher"}
        Exact Hessian of the negative log joint, or the Fisher information of the likelihood
        (Monte Carlo over ``fisher_samples`` draws of y, positive semi-definite) plus the exact
        Hessian of the negative log prior. Networks need ``"fisher"``: their exact Hessian at a
        MAP is usually indefinite.
    subset : {"all", "last-layer"}
        Which latents get the Gaussian: all, or the model's output layer (``ZooModel.last_layer``)
        with every other site held at its MAP value, as in laplace-torch's last-layer Laplace.
    tune_prior : bool
        Scale the precision of every Normal prior by the factor that maximises the Laplace
        estimate of the marginal likelihood (post-hoc, as in laplace-torch).
    prior_rounds : int
        With ``tune_prior``, rounds of (MAP under the current prior scale, then re-tune the scale);
        1 is post-hoc tuning, more move the MAP to the evidence-preferred prior.
    num_steps, lr, lr_decay : MAP by Adam with an exponential schedule.
    batch_size : int, optional
        Minibatches for the MAP and blocks of points for the curvature (default: all points at
        once); needs a model that indexes its data with the indices of ``pyro.plate("data")``.
    memory_limit_gb : float, optional
        Largest dense Hessian allowed; default a quarter of this machine's memory.
    """

    name: ClassVar[str] = "laplace"
    hessian: str = "full"
    curvature: str = "exact"
    subset: str = "all"
    tune_prior: bool = True
    prior_rounds: int = 1
    num_steps: int = 3000
    batch_size: int | None = None
    lr: float = 1e-2
    lr_decay: float = 0.1
    fisher_samples: int = 4
    memory_limit_gb: float | None = None

    def fit(self, zm, args, sites, *, num_samples, progress) -> FitResult:
        if self.hessian not in HESSIANS:
            raise ZooError(f"laplace: hessian must be one of {HESSIANS}, got {self.hessian!r}")
        if self.curvature not in CURVATURES:
            raise ZooError(f"laplace: curvature must be one of {CURVATURES}, got {self.curvature!r}")
        if self.subset not in SUBSETS:
            raise ZooError(f"laplace: subset must be one of {SUBSETS}, got {self.subset!r}")
        check_positive("laplace: num_steps", self.num_steps)
        check_positive("laplace: fisher_samples", self.fisher_samples)
        check_positive("laplace: prior_rounds", self.prior_rounds)
        if self.batch_size is not None:
            check_positive("laplace: batch_size", self.batch_size)
        joint = LogJoint(zm.model, args, sites, zm.init_loc_fn, self.batch_size)
        names = self._subset_sites(zm, sites)
        sub = joint.coordinates(names)
        if self.hessian == "full":
            self._check_memory(len(sub))
        theta, alpha, losses = joint.initial, 1.0, []
        for _ in range(self.prior_rounds if self.tune_prior else 1):
            theta, round_losses, info = self._map(joint, theta, alpha, progress)
            losses += round_losses
            h_data = self._likelihood_curvature(joint, theta, names, sub) + _curvature(
                lambda t: -joint.other_log_prior(joint.embed(theta, names, t)), theta[sub], self.hessian)
            h_normal = joint.normal_precision[sub]
            alpha, log_evidence = self._prior_scale(joint, theta, sub, h_data, h_normal)
            if "stopped" in info or "interrupted" in info:
                break
        precision = h_data + alpha * (h_normal if self.hessian == "diag" else torch.diag(h_normal))
        draws = theta.expand(num_samples, -1).clone()
        draws[:, sub] = self._draw(theta[sub], precision, num_samples)
        samples = {k: v.unsqueeze(0) for k, v in joint.constrain(draws).items()}
        info.update(hessian=self.hessian, curvature=self.curvature, subset=self.subset,
                    prior_precision_scale=alpha, log_marginal_likelihood=log_evidence,
                    num_parameters=len(sub))
        params = {"laplace.loc": theta.detach(), "laplace.precision": precision.detach()}
        return FitResult(samples, loss=losses, params=params, info=info)

    def _subset_sites(self, zm, sites) -> list[str]:
        if self.subset == "all":
            return list(sites.latent)
        if not zm.last_layer:
            raise ZooError("laplace: subset='last-layer' needs a model that names its output layer "
                           "(ZooModel(last_layer=[...])); this one does not, so use subset='all'")
        return zm.last_layer

    def _check_memory(self, size: int) -> None:
        limit = self.memory_limit_gb
        if limit is None:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**30
        need = 4 * size * size * 8 / 2**30  # four dense float64 matrices at the peak
        if need > limit:
            raise ZooError(f"laplace: a full Hessian over {size:,} parameters needs about {need:.1f} GiB, "
                           f"more than the {limit:.1f} GiB allowed; use hessian='diag' or "
                           "subset='last-layer' (or raise memory_limit_gb)")

    def _map(self, joint: LogJoint, start, alpha: float, progress: bool):
        theta = start.clone().requires_grad_(True)
        optim = torch.optim.Adam([theta], lr=self.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(optim, lr_gamma(self.lr_decay, self.num_steps))
        losses, info = [], {}
        bar = progress_bar(self.num_steps, "laplace MAP", progress)
        try:
            for step in range(self.num_steps):
                loss = -joint.log_joint(theta, alpha, joint.minibatch(step)) / joint.num_points
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

    def _likelihood_curvature(self, joint, theta, names, sub):
        size = len(sub)
        total = torch.zeros((size, size) if self.hessian == "full" else size, device=theta.device)
        y = joint.args[-1]
        for idx in joint.blocks(max_jacobian_rows=2**25 // max(size, 1)):
            if self.curvature == "exact":
                total += _curvature(lambda t, i=idx: -joint.pointwise(joint.embed(theta, names, t), y, i).sum(),
                                    theta[sub], self.hessian)
                continue
            for _ in range(self.fisher_samples):
                y_sim = joint.simulate(theta, idx)
                jac = torch.func.jacrev(
                    lambda t, i=idx, ys=y_sim: joint.pointwise(joint.embed(theta, names, t), ys, i))(theta[sub])
                total += (jac.T @ jac if self.hessian == "full" else (jac ** 2).sum(0)) / self.fisher_samples
        return total

    def _prior_scale(self, joint, theta, sub, h_data, h_normal):
        """The prior-precision factor alpha maximising the Laplace evidence, and that evidence."""
        with torch.no_grad():
            fixed = joint.total_log_likelihood(theta) + joint.other_log_prior(theta).item()
        fixed += 0.5 * len(sub) * math.log(2 * math.pi)
        logdet = _logdet_path(h_data.double(), h_normal.double(), self.hessian)
        mask = joint.subset_mask(sub)

        def log_evidence(alpha):
            value = logdet(alpha)
            if value is None:
                return -math.inf
            return fixed + joint.normal_log_prior(theta, alpha, mask).item() - 0.5 * value

        grid = [10 ** (k / 10) for k in range(-30, 31)] if self.tune_prior and bool((h_normal > 0).any()) else [1.0]
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


def _logdet_path(h_data, d, structure):
    """``alpha -> log det(h_data + alpha diag(d))`` (None where not positive definite).

    Dense with every d > 0: one eigendecomposition of D^-1/2 H D^-1/2 serves every alpha.
    """
    if structure == "diag":
        return lambda alpha: None if ((h_data + alpha * d) <= 0).any() else float((h_data + alpha * d).log().sum())
    if bool((d > 0).all()):
        root = d.rsqrt()
        mu = torch.linalg.eigvalsh(h_data * root[:, None] * root[None, :])
        log_d = float(d.log().sum())
        return lambda alpha: None if (mu + alpha <= 0).any() else log_d + float((mu + alpha).log().sum())

    def slow(alpha):
        sign, value = torch.linalg.slogdet(h_data + alpha * torch.diag(d))
        return None if sign <= 0 else float(value)

    return slow


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


def _run(model, args, indices=None):
    """A trace of ``model(*args)``; with ``indices``, on that block of ``pyro.plate("data")``."""
    if indices is None:
        return poutine.trace(model).get_trace(*args)
    with MinibatchIndices(indices):
        return poutine.trace(model).get_trace(*args)


def _normal_base(fn):
    """The Normal inside ``fn`` (through Independent wrappers), else None."""
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn if type(fn) is dist.Normal else None


class LogJoint:
    """The model's log joint as a function of one flat vector of unconstrained latents.

    With ``batch_size`` the data term is evaluated on minibatches (scaled by N / B through the
    indices of ``pyro.plate("data")``) and the curvature in blocks of points.
    """

    def __init__(self, model, args, sites, init_loc_fn, batch_size=None):
        self.model, self.args, self.sites = model, args, sites
        self.num_points = max(args[0].shape[0], 1)
        self.batch_size = batch_size if batch_size is not None and batch_size < self.num_points else None
        # the prior-only work (shapes, other priors) runs the model on one point when batching
        self.one_point = None if self.batch_size is None else torch.arange(1, device=args[0].device)
        with torch.no_grad():
            trace = _run(InitMessenger(init_loc_fn)(model), args, self.one_point)
        self.names = list(sites.latent)
        self.transforms = {n: biject_to(trace.nodes[n]["fn"].support) for n in self.names}
        self.shapes = {n: trace.nodes[n]["value"].shape for n in self.names}
        self.initial = torch.cat([self.transforms[n].inv(trace.nodes[n]["value"]).reshape(-1)
                                  for n in self.names]).detach()
        scales = []
        for n in self.names:
            base = _normal_base(trace.nodes[n]["fn"])
            scale = torch.zeros(self.shapes[n]) if base is None else base.scale.expand(self.shapes[n])
            scales.append(scale.reshape(-1).to(self.initial.device))
        self.prior_scale = torch.cat(scales)  # 0 where the prior is not Normal
        self.is_normal = self.prior_scale > 0
        self.normal_precision = torch.where(self.is_normal, self.prior_scale.clamp_min(1e-30) ** -2, 0.0)
        self.order = torch.randperm(self.num_points, device=self.initial.device)

    def coordinates(self, names) -> torch.Tensor:
        """Indices into the flat vector of the sites ``names``."""
        spans, start = {}, 0
        for n in self.names:
            size = math.prod(self.shapes[n])
            spans[n] = torch.arange(start, start + size)
            start += size
        return torch.cat([spans[n] for n in names]).to(self.initial.device)

    def embed(self, theta, names, values) -> dict[str, torch.Tensor]:
        """Sites of ``theta`` (held fixed) with the sites ``names`` taken from the vector ``values``.

        Only those sites carry gradients, so a curvature over the last layer back-propagates
        through the last layer only.
        """
        parts, start = self._split(theta.detach()), 0
        for n in names:
            size = math.prod(self.shapes[n])
            parts[n] = values[start:start + size].reshape(self.shapes[n])
            start += size
        return parts

    def _split(self, theta):
        if isinstance(theta, dict):
            return theta
        out, start = {}, 0
        for n in self.names:
            size = math.prod(self.shapes[n])
            out[n] = theta[..., start:start + size].reshape(theta.shape[:-1] + self.shapes[n])
            start += size
        return out

    def constrain(self, theta) -> dict[str, torch.Tensor]:
        return {n: self.transforms[n](v) for n, v in self._split(theta).items()}

    def minibatch(self, step: int):
        """The indices of minibatch ``step`` (None: full batch)."""
        if self.batch_size is None:
            return None
        per_epoch = self.num_points // self.batch_size
        if step % per_epoch == 0 and step:
            self.order = torch.randperm(self.num_points, device=self.order.device)
        start = (step % per_epoch) * self.batch_size
        return self.order[start:start + self.batch_size]

    def blocks(self, max_jacobian_rows: int):
        """Consecutive blocks of point indices covering the data (None: all at once)."""
        size = min(self.batch_size or self.num_points, max(max_jacobian_rows, 1))
        if self.batch_size is None or size >= self.num_points:
            yield None
            return
        for start in range(0, self.num_points, size):
            yield torch.arange(start, min(start + size, self.num_points), device=self.initial.device)

    def _trace(self, theta, args, indices=None):
        return _run(poutine.condition(self.model, self.constrain(theta)), args, indices)

    def _other(self, trace, theta):
        """Log prior of the non-Normal sites in ``trace`` plus the log |Jacobian| of the unconstrained map."""
        other = sum(self.transforms[n].log_abs_det_jacobian(u, self.transforms[n](u)).sum()
                    for n, u in self._split(theta).items())
        for n in self.names:
            fn = trace.nodes[n]["fn"]
            if _normal_base(fn) is None:
                other = other + fn.log_prob(trace.nodes[n]["value"]).sum()
        return torch.as_tensor(other)

    def subset_mask(self, sub) -> torch.Tensor:
        """The Normal-prior coordinates among ``sub``, as a boolean mask over the flat vector."""
        return self.is_normal & torch.zeros_like(self.is_normal).index_fill(0, sub, True)

    def normal_log_prior(self, theta, alpha: float = 1.0, mask=None):
        """Sum of the Normal priors' log densities (precision scaled by alpha), over ``mask`` or all."""
        mask = self.is_normal if mask is None else mask
        sd = self.prior_scale[mask] / math.sqrt(alpha)
        return dist.Normal(torch.zeros_like(sd), sd).log_prob(theta[..., mask]).sum()

    def other_log_prior(self, theta):
        """Log prior of the non-Normal sites plus the log |Jacobian| of the unconstrained map."""
        return self._other(self._trace(theta, self.args, self.one_point), theta)

    def log_joint(self, theta, alpha: float = 1.0, indices=None):
        """Log likelihood (on a minibatch, scaled by N / B) + every log prior + log |J|."""
        trace = self._trace(theta, self.args, indices)
        loglik = sum(trace.nodes[n]["scale"] * trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]).sum()
                     for n in self.sites.observed)
        return loglik + self.normal_log_prior(theta, alpha) + self._other(trace, theta)

    def pointwise(self, theta, y, indices=None):
        """Log likelihood per data point (of the block ``indices``) with observations ``y``."""
        trace = self._trace(theta, (*self.args[:-1], y), indices)
        return sum(trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]) for n in self.sites.observed)

    def total_log_likelihood(self, theta) -> float:
        return sum(float(self.pointwise(theta, self.args[-1], idx).sum())
                   for idx in self.blocks(self.batch_size or self.num_points))

    def simulate(self, theta, indices=None):
        """Observations drawn from the model at ``theta`` (for the Monte Carlo Fisher), placed in
        a full-length copy of the data's observations at ``indices``."""
        with torch.no_grad():
            trace = self._trace(theta, (*self.args[:-1], None), indices)
        (name,) = self.sites.observed
        drawn = trace.nodes[name]["value"]
        if indices is None:
            return drawn
        y = self.args[-1].clone()
        y[indices] = drawn.to(y.dtype)
        return y
