"""What the Laplace backend computes on the flat log density: the split of the log joint into data,
Normal-prior and other terms, and exact Hessians in chunks of rows."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro import poutine

from .._errors import ZooError
from .._weight_prior import WeightPrior
from .sites import DATA_PLATE, is_deterministic, is_sample, on_points, without_targets


class LaplaceTerms:
    """The log joint at one flat vector ``theta``, split as Laplace needs it.

    ``log_joint(theta, alpha)``: data + priors + log |J|, with the precision of every fixed Normal prior
    scaled by ``alpha``. ``pointwise``: the log-likelihood per observation (a block of plate "data"
    with ``indices``), at the data or at simulated observations. ``other_log_prior``: every prior term
    that is not a fixed Normal, plus log |J|. A Normal prior whose loc or scale depends on other latents
    (a hierarchical prior) is not fixed: it counts as "other".
    """

    def __init__(self, problem, batch_size=None):
        self.latents, self.density, self.initial = problem.flat()
        self.problem, self.sites, self.args = problem, problem.sites, problem.args
        self.num_points = max(self.args[0].shape[0], 1)
        self.batch_size = batch_size if batch_size is not None and batch_size < self.num_points else None
        device = self.initial.device
        # prior-only terms run the model on one point when the model can be subsampled
        self.one_point = torch.arange(1, device=device) if self.sites.subsamplable else None
        loc, scale = self._fixed_normals()
        self.prior_loc, self.prior_scale = loc, scale  # scale 0 where the prior is not a fixed Normal
        self.is_normal = scale > 0
        self.normal_precision = torch.where(self.is_normal, scale.clamp_min(1e-30) ** -2, 0.0)
        self.order = torch.randperm(self.num_points, device=device)

    def _fixed_normals(self):
        theta = self.initial.clone().requires_grad_(True)
        values = self.latents.constrain(theta)
        trace = _trace(self.problem.model, values, self.args, self.one_point)
        if any(self._other_term(name, site) and _in_data(site) for name, site in trace.nodes.items()):
            self.one_point = None  # a prior-side term inside plate "data" needs every point
        locs, scales = [], []
        for n in self.latents.names:
            fn, size = trace.nodes[n]["fn"], math.prod(self.latents.free_shapes[n])
            while isinstance(fn, dist.Independent):
                fn = fn.base_dist
            fixed = isinstance(fn, WeightPrior) or (
                type(fn) is dist.Normal and not (fn.loc.requires_grad or fn.scale.requires_grad))
            shape = self.latents.shapes[n]
            locs.append(fn.loc.detach().expand(shape).reshape(-1) if fixed else torch.zeros(size))
            scales.append(fn.scale.detach().expand(shape).reshape(-1) if fixed else torch.zeros(size))
        device = self.initial.device
        return torch.cat(locs).to(device), torch.cat(scales).to(device)

    def embed(self, theta, sub, values) -> dict[str, torch.Tensor]:
        """``theta`` held fixed with coordinates ``sub`` taken from ``values``, split by site: only the sites
        ``sub`` touches carry gradients, so a last layer's backward pass stops at the last layer."""
        theta = theta.detach()
        full = theta.index_copy(0, sub, values)
        touched = torch.zeros_like(theta, dtype=torch.bool).index_fill(0, sub, True)
        return {n: (full if bool(touched[a:b].any()) else theta)[a:b].reshape(self.latents.free_shapes[n])
                for n, (a, b) in self.latents.spans.items()}

    def minibatch(self, step: int):
        """The indices of minibatch ``step`` (None: full batch)."""
        if self.batch_size is None:
            return None
        per_epoch = self.num_points // self.batch_size
        if step % per_epoch == 0 and step:
            self.order = torch.randperm(self.num_points, device=self.order.device)
        start = (step % per_epoch) * self.batch_size
        return self.order[start:start + self.batch_size]

    def blocks(self, max_rows: int):
        """Consecutive blocks of at most ``max_rows`` point indices (and of ``batch_size``) covering the data;
        None: all at once, also for a model that cannot be run on some of its points."""
        size = min(self.batch_size or self.num_points, max(max_rows, 1))
        if size >= self.num_points or not self.sites.subsamplable:
            yield None
            return
        for start in range(0, self.num_points, size):
            yield torch.arange(start, min(start + size, self.num_points), device=self.initial.device)

    def normal_log_prior(self, theta, alpha=1.0, mask=None):
        """Sum of the fixed Normal priors' log densities (precision scaled by alpha: a number, or one per
        coordinate), over ``mask`` or all."""
        mask = self.is_normal if mask is None else mask
        scaled = alpha[mask].to(theta.dtype) if isinstance(alpha, torch.Tensor) else torch.tensor(float(alpha))
        sd = self.prior_scale[mask] / scaled.sqrt()
        return dist.Normal(self.prior_loc[mask], sd).log_prob(theta[..., mask]).sum()

    def log_joint(self, theta, alpha=1.0, indices=None):
        """The log joint with every fixed Normal prior's precision scaled by ``alpha`` (a number, or one per
        coordinate)."""
        value = self.density(theta, indices)
        if isinstance(alpha, torch.Tensor) or alpha != 1.0:
            value = value + self.normal_log_prior(theta, alpha) - self.normal_log_prior(theta)
        return value

    def _other_term(self, name, site) -> bool:
        """A sample site of the log joint that is not an observation fed by the data."""
        return is_sample(site) and not is_deterministic(site) and name not in self.sites.observed

    def trace(self, theta) -> poutine.Trace:
        """The model at ``theta`` (the prior-side points: one where it can be subsampled)."""
        return _trace(self.problem.model, self.latents.constrain(theta), self.args, self.one_point)

    def trace_at(self, values: dict, indices=None) -> poutine.Trace:
        """The model with its latents at ``values`` (site -> constrained value) on points ``indices``."""
        return _trace(self.problem.model, values, self.args, indices)

    def other_log_prior(self, theta):
        """Every term of the log joint but the observations and the fixed Normal priors, plus log |J|:
        the other priors, pyro.factor terms, observations that are constants of the model."""
        trace = self.trace(theta)
        total = self.latents.unpack(theta)[1]
        for name, site in trace.nodes.items():
            if self._other_term(name, site):
                total = total + site["fn"].log_prob(site["value"]).sum()
        flat = theta if isinstance(theta, torch.Tensor) else torch.cat([theta[n].reshape(-1)
                                                                       for n in self.latents.names])
        return total - self.normal_log_prior(flat)

    def pointwise(self, theta, indices=None, observed=None) -> torch.Tensor:
        """Log-likelihood of every observation (all observed sites, flattened and joined): at the data,
        or with ``observed`` (site -> values, e.g. simulated) in place of it."""
        values = self.latents.constrain(theta)
        args = self.args
        if observed is not None:
            values = {**values, **observed}
            args = without_targets(args, self.sites)
        trace = _trace(self.problem.model, values, args, indices)
        return torch.cat([trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]).reshape(-1)
                          for n in self.sites.observed])

    def total_log_likelihood(self, theta) -> float:
        return sum(float(self.pointwise(theta, idx).sum()) for idx in self.blocks(self.batch_size or self.num_points))

    @torch.no_grad()
    def simulate(self, theta, indices=None) -> dict[str, torch.Tensor]:
        """Observations drawn from the model at ``theta`` (for the Monte Carlo Fisher)."""
        trace = _trace(self.problem.model, self.latents.constrain(theta), without_targets(self.args, self.sites),
                       indices)
        return {n: trace.nodes[n]["value"] for n in self.sites.observed}


def _in_data(site) -> bool:
    return any(f.name == DATA_PLATE for f in site["cond_indep_stack"])


def _trace(model, values, args, indices):
    return poutine.trace(on_points(poutine.condition(model, values), indices)).get_trace(*args)


def not_positive(count: int, curvature: str) -> ZooError:
    hint = ("use curvature='fisher' (positive semi-definite), or train the MAP longer (num_steps)"
            if curvature == "exact" else "train the MAP longer (num_steps) or strengthen the prior")
    return ZooError(f"laplace: the {curvature} Hessian at the MAP is not positive definite "
                    f"({count} non-positive eigenvalues); {hint}. In a hierarchical model, a group scale that "
                    "runs to 0 leaves the joint density no mode (a centred hierarchy's funnel): use nuts, or make it "
                    "non-centred (group = loc + scale * standard normal) and read the PSIS k-hat")


def exact_curvature(fn, theta, structure: str, chunk: int = 256) -> torch.Tensor:
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


