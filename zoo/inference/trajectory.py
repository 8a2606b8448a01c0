"""One NUTS transition for C chains at once, as tensor code over (C, D) positions.

The iterative, unrolled design of TensorFlow Probability's ``NoUTurnSampler``: every chain doubles its
trajectory in lockstep, a chain that has stopped is masked rather than waited for, and the only host sync
is the "has every chain stopped?" test once per doubling. Within a doubling of 2^d leapfrog steps the
proposal is drawn multinomially (progressive uniform sampling over the leaves), the generalised U-turn
criterion is checked at each completed sub-subtree through momentum checkpoints indexed by the leaf's
bits, and a leaf whose energy error passes 1,000 is a divergence. A subtree that turns or diverges is
rejected and ends that chain's trajectory; a valid one replaces the proposal with probability
min(1, w_new / w_old) (biased progressive sampling), as in Stan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from ._random import ChainRandom

MAX_ENERGY_ERROR = 1000.0
SLOTS = 64  # random-counter slots per transition: the momentum, then one per doubling


@dataclass
class Point:
    """Positions, momenta, log densities and their gradients of C chains."""

    z: torch.Tensor
    r: torch.Tensor
    logp: torch.Tensor
    grad: torch.Tensor

    def where(self, mask: torch.Tensor, other: Point) -> Point:
        """This point for the chains in ``mask``, ``other`` elsewhere."""
        return Point(*(torch.where(mask.view(-1, *[1] * (getattr(self, f.name).dim() - 1)),
                                   getattr(self, f.name), getattr(other, f.name)) for f in fields(Point)))


class Metric:
    """The inverse mass matrix of each chain: (C, D) diagonal or (C, D, D) dense."""

    def __init__(self, inverse_mass: torch.Tensor):
        self.inverse_mass = inverse_mass
        self.dense = inverse_mass.dim() == 3
        if self.dense:  # inverse mass = L L^T; a momentum L^-T e has covariance M
            self.cholesky = torch.linalg.cholesky(inverse_mass)

    def velocity(self, r: torch.Tensor) -> torch.Tensor:
        return (self.inverse_mass @ r.unsqueeze(-1)).squeeze(-1) if self.dense else self.inverse_mass * r

    def kinetic(self, r: torch.Tensor) -> torch.Tensor:
        return 0.5 * (r * self.velocity(r)).sum(-1)

    def momentum(self, normal: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return torch.linalg.solve_triangular(self.cholesky.mT, normal.unsqueeze(-1), upper=True).squeeze(-1)
        return normal / self.inverse_mass.sqrt()


Density = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # z (C, D) -> log p (C), grad (C, D)


def leapfrog(point: Point, step: torch.Tensor, metric: Metric, density: Density) -> Point:
    """One leapfrog step of signed size ``step`` (C,) per chain; a non-finite log density becomes -inf."""
    half = 0.5 * step.unsqueeze(-1)
    r = point.r + half * point.grad
    z = point.z + step.unsqueeze(-1) * metric.velocity(r)
    logp, grad = density(z)
    finite = torch.isfinite(logp) & torch.isfinite(grad).all(-1)
    logp = torch.where(finite, logp, torch.full_like(logp, -torch.inf))
    grad = torch.where(finite.unsqueeze(-1), grad, torch.zeros_like(grad))
    return Point(z, r + half * grad, logp, grad)


def is_turning(metric: Metric, r_left: torch.Tensor, r_right: torch.Tensor, r_sum: torch.Tensor) -> torch.Tensor:
    """The generalised no-U-turn criterion (Betancourt 2017) for a span with momenta summing to ``r_sum``."""
    return ((metric.velocity(r_left) * r_sum).sum(-1) <= 0) | ((metric.velocity(r_right) * r_sum).sum(-1) <= 0)


def _checkpoints(leaf: int) -> tuple[int, int]:
    """Checkpoint slots of the sub-subtrees that end at ``leaf`` (odd leaves) or that it starts (even
    leaves store at the second value): the set bits of leaf // 2, and the run of trailing ones."""
    high = bin(leaf >> 1).count("1")
    trailing = len(bin(leaf)) - len(bin(leaf).rstrip("1")) if leaf % 2 else 0
    return high - trailing + 1, high


@dataclass
class Subtree:
    last: Point
    proposal: Point
    log_weight: torch.Tensor
    r_sum: torch.Tensor
    invalid: torch.Tensor  # turned or diverged inside
    diverging: torch.Tensor
    n_steps: torch.Tensor
    accept_sum: torch.Tensor


def build_subtree(edge: Point, step: torch.Tensor, num_leaves: int, energy0: torch.Tensor, uniforms: torch.Tensor,
                  metric: Metric, density: Density) -> Subtree:
    """``num_leaves`` leapfrog steps from ``edge``; a chain stops extending once its subtree is invalid."""
    chains, dim = edge.z.shape
    alive = torch.ones(chains, dtype=torch.bool, device=edge.z.device)
    invalid = torch.zeros_like(alive)
    diverging = torch.zeros_like(alive)
    log_weight = torch.full_like(edge.logp, -torch.inf)
    r_sum = torch.zeros_like(edge.r)
    n_steps = torch.zeros_like(edge.logp)
    accept_sum = torch.zeros_like(edge.logp)
    depth = max(num_leaves.bit_length() - 1, 1)
    saved_r = edge.r.new_zeros(depth, chains, dim)
    saved_sum = edge.r.new_zeros(depth, chains, dim)
    point, proposal = edge, edge
    log_u = uniforms.log()
    for leaf in range(num_leaves):
        new = leapfrog(point, step, metric, density)
        error = torch.nan_to_num(-new.logp + metric.kinetic(new.r) - energy0, nan=torch.inf)
        point = new.where(alive, point)
        diverging = diverging | (alive & (error > MAX_ENERGY_ERROR))
        n_steps = n_steps + alive
        accept_sum = accept_sum + torch.where(alive, torch.exp(-error).clamp(max=1.0), 0.0)
        total = torch.logaddexp(log_weight, -error)
        proposal = new.where(alive & (log_u[:, leaf] < -error - total), proposal)
        log_weight = torch.where(alive, total, log_weight)
        r_sum = torch.where(alive.unsqueeze(-1), r_sum + new.r, r_sum)
        low, high = _checkpoints(leaf)
        if leaf % 2 == 0:
            saved_r[high], saved_sum[high] = new.r, r_sum
        else:
            for slot in range(high, low - 1, -1):
                span = r_sum - saved_sum[slot] + saved_r[slot]
                invalid = invalid | (alive & is_turning(metric, saved_r[slot], new.r, span))
        invalid = invalid | diverging
        alive = alive & ~invalid
    return Subtree(point, proposal, log_weight, r_sum, invalid, diverging, n_steps, accept_sum)


@dataclass
class Transition:
    """Where each chain went, and what it took (ArviZ's sample_stats names)."""

    point: Point
    diverging: torch.Tensor
    tree_depth: torch.Tensor
    n_steps: torch.Tensor
    energy: torch.Tensor
    acceptance_rate: torch.Tensor


def nuts_transition(start: Point, step_size: torch.Tensor, metric: Metric, density: Density,
                    random: ChainRandom, counter: int, max_tree_depth: int) -> Transition:
    """One NUTS iteration of every chain from ``start`` (its momenta are ignored and redrawn)."""
    chains, dim = start.z.shape
    r0 = metric.momentum(random.normal(counter * SLOTS, dim, start.z.dtype))
    start = Point(start.z, r0, start.logp, start.grad)
    energy0 = -start.logp + metric.kinetic(r0)
    left = right = proposal = start
    log_weight = torch.zeros_like(start.logp)
    r_sum = r0
    active = torch.ones(chains, dtype=torch.bool, device=start.z.device)
    diverging = torch.zeros_like(active)
    depth = torch.zeros(chains, dtype=torch.long, device=start.z.device)
    n_steps = torch.zeros_like(start.logp)
    accept_sum = torch.zeros_like(start.logp)
    for d in range(max_tree_depth):
        u = random.uniform(counter * SLOTS + 1 + d, 2 + 2**d, start.z.dtype)
        forward = u[:, 0] < 0.5
        edge = right.where(forward, left)
        sub = build_subtree(edge, torch.where(forward, step_size, -step_size), 2**d, energy0, u[:, 2:],
                            metric, density)
        n_steps = n_steps + torch.where(active, sub.n_steps, 0.0)
        accept_sum = accept_sum + torch.where(active, sub.accept_sum, 0.0)
        diverging = diverging | (active & sub.diverging)
        depth = depth + active
        right = sub.last.where(active & forward, right)
        left = sub.last.where(active & ~forward, left)
        valid = active & ~sub.invalid
        proposal = sub.proposal.where(valid & (u[:, 1].log() < sub.log_weight - log_weight), proposal)
        log_weight = torch.where(valid, torch.logaddexp(log_weight, sub.log_weight), log_weight)
        r_sum = torch.where(valid.unsqueeze(-1), r_sum + sub.r_sum, r_sum)
        active = valid & ~is_turning(metric, left.r, right.r, r_sum)
        if not bool(active.any()):  # the one host sync of a doubling
            break
    return Transition(proposal, diverging, depth, n_steps, -proposal.logp + metric.kinetic(proposal.r),
                      accept_sum / n_steps.clamp(min=1))
