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
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import torch

from ._random import ChainRandom

MAX_ENERGY_ERROR = 1000.0
SLOTS = 64  # random-counter slots per transition: the momentum, then one per doubling
LEAVES_PER_CALL = 2  # leapfrog steps per call of the compiled leaf step: they share its fixed cost


class Point(NamedTuple):
    """Positions, momenta, log densities and their gradients of C chains."""

    z: torch.Tensor
    r: torch.Tensor
    logp: torch.Tensor
    grad: torch.Tensor

    def where(self, mask: torch.Tensor, other: Point) -> Point:
        """This point for the chains in ``mask``, ``other`` elsewhere."""
        pairs = zip(self, other, strict=True)
        return Point(*(torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b) for a, b in pairs))


def velocity(inverse_mass: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """M^-1 r for a (C, D) diagonal or (C, D, D) dense inverse mass matrix."""
    return (inverse_mass @ r.unsqueeze(-1)).squeeze(-1) if inverse_mass.dim() == 3 else inverse_mass * r


def kinetic(inverse_mass: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    return 0.5 * (r * velocity(inverse_mass, r)).sum(-1)


class Metric:
    """The inverse mass matrix of each chain: (C, D) diagonal or (C, D, D) dense."""

    def __init__(self, inverse_mass: torch.Tensor):
        self.inverse_mass = inverse_mass.contiguous()  # as every later one is laid out: no recompiled leaf
        if inverse_mass.dim() == 3:  # inverse mass = L L^T; a momentum L^-T e has covariance M
            self.cholesky = torch.linalg.cholesky(inverse_mass)

    def kinetic(self, r: torch.Tensor) -> torch.Tensor:
        return kinetic(self.inverse_mass, r)

    def momentum(self, normal: torch.Tensor) -> torch.Tensor:
        if self.inverse_mass.dim() == 3:
            return torch.linalg.solve_triangular(self.cholesky.mT, normal.unsqueeze(-1), upper=True).squeeze(-1)
        return normal / self.inverse_mass.sqrt()


Density = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # z (C, D) -> log p (C), grad (C, D)


def leapfrog(point: Point, step: torch.Tensor, inverse_mass: torch.Tensor, density: Density) -> Point:
    """One leapfrog step of signed size ``step`` (C,) per chain; a non-finite log density becomes -inf."""
    half = 0.5 * step.unsqueeze(-1)
    r = point.r + half * point.grad
    z = point.z + step.unsqueeze(-1) * velocity(inverse_mass, r)
    logp, grad = density(z)
    finite = torch.isfinite(logp) & torch.isfinite(grad).all(-1)
    logp = torch.where(finite, logp, torch.full_like(logp, -torch.inf))
    grad = torch.where(finite.unsqueeze(-1), grad, torch.zeros_like(grad))
    return Point(z, r + half * grad, logp, grad)


def is_turning(v_left: torch.Tensor, v_right: torch.Tensor, r_sum: torch.Tensor) -> torch.Tensor:
    """The generalised no-U-turn criterion (Betancourt 2017) for a span with momenta summing to ``r_sum``
    and end velocities (M^-1 r) ``v_left``, ``v_right``."""
    return ((v_left * r_sum).sum(-1) <= 0) | ((v_right * r_sum).sum(-1) <= 0)


def _checkpoints(leaf: int) -> tuple[int, int]:
    """Checkpoint slots of the sub-subtrees that end at ``leaf`` (odd leaves) or that it starts (even
    leaves store at the second value): the set bits of leaf // 2, and the run of trailing ones."""
    high = bin(leaf >> 1).count("1")
    trailing = len(bin(leaf)) - len(bin(leaf).rstrip("1")) if leaf % 2 else 0
    return high - trailing + 1, high


@lru_cache(maxsize=4096)
def slot_masks(first: int, leaves: int, slots: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which checkpoint slot each of the leaves ``first .. first + leaves - 1`` stores (even leaves) and
    which it checks against (odd leaves), as (leaves, slots) masks: tensors rather than Python branches,
    so that one compiled run of leaves serves every run of that length."""
    index = torch.arange(slots, device=device)
    store, check = [], []
    for leaf in range(first, first + leaves):
        low, high = _checkpoints(leaf)
        store.append(index == high if leaf % 2 == 0 else torch.zeros_like(index, dtype=torch.bool))
        check.append((index >= low) & (index <= high) if leaf % 2 else torch.zeros_like(index, dtype=torch.bool))
    return torch.stack(store), torch.stack(check)


class Subtree(NamedTuple):
    last: Point
    proposal: Point
    log_weight: torch.Tensor
    r_sum: torch.Tensor
    invalid: torch.Tensor  # turned or diverged inside
    diverging: torch.Tensor
    n_steps: torch.Tensor
    accept_sum: torch.Tensor
    alive: torch.Tensor  # still extending
    saved_r: torch.Tensor  # (slots, C, D) momenta at the checkpoints, their velocities, the running sums
    saved_v: torch.Tensor
    saved_sum: torch.Tensor


def empty_subtree(edge: Point, slots: int) -> Subtree:
    """A subtree of no leaves at ``edge``. No two of its tensors share memory: a compiled leaf is
    specialised to how its inputs alias, and every later leaf gets distinct ones."""
    alive = torch.ones_like(edge.logp, dtype=torch.bool)
    return Subtree(edge, Point(*(a.clone() for a in edge)), torch.full_like(edge.logp, -torch.inf),
                   torch.zeros_like(edge.r), ~alive, ~alive, torch.zeros_like(edge.logp), torch.zeros_like(edge.logp),
                   alive, *(edge.r.new_zeros(slots, *edge.r.shape) for _ in range(3)))


def grow(tree: Subtree, step: torch.Tensor, inverse_mass: torch.Tensor, energy0: torch.Tensor,
         log_u: torch.Tensor, store: torch.Tensor, check: torch.Tensor, density: Density) -> Subtree:
    """One more leaf of every chain's subtree: a leapfrog step, multinomial sampling of the proposal, and
    the U-turn checks at the checkpoints the leaf closes. A chain that is no longer alive keeps its tree."""
    alive = tree.alive
    new = leapfrog(tree.last, step, inverse_mass, density)
    v = velocity(inverse_mass, new.r)
    error = torch.nan_to_num(-new.logp + 0.5 * (new.r * v).sum(-1) - energy0, nan=torch.inf)
    diverging = tree.diverging | (alive & (error > MAX_ENERGY_ERROR))
    total = torch.logaddexp(tree.log_weight, -error)
    proposal = new.where(alive & (log_u < -error - total), tree.proposal)
    r_sum = torch.where(alive.unsqueeze(-1), tree.r_sum + new.r, tree.r_sum)
    put = store.view(-1, 1, 1)
    saved_r = torch.where(put, new.r, tree.saved_r)
    saved_v = torch.where(put, v, tree.saved_v)
    saved_sum = torch.where(put, r_sum, tree.saved_sum)
    span = r_sum - saved_sum + saved_r  # (slots, C, D): the momenta of each sub-subtree this leaf closes
    turned = (is_turning(saved_v, v, span) & check.view(-1, 1)).any(0)
    invalid = tree.invalid | (alive & turned) | diverging
    return Subtree(new.where(alive, tree.last), proposal, torch.where(alive, total, tree.log_weight), r_sum,
                   invalid, diverging, tree.n_steps + alive, tree.accept_sum + torch.where(
                       alive, torch.exp(-error).clamp(max=1.0), 0.0), alive & ~invalid, saved_r, saved_v, saved_sum)


def grow_leaves(tree: Subtree, step: torch.Tensor, inverse_mass: torch.Tensor, energy0: torch.Tensor,
                log_u: torch.Tensor, store: torch.Tensor, check: torch.Tensor, density: Density) -> Subtree:
    """``len(log_u)`` more leaves (a row of ``log_u``, ``store`` and ``check`` each) in one call: compiled,
    one launch runs several leapfrog steps, and the call's fixed cost is shared by them."""
    for leaf in range(log_u.shape[0]):
        tree = grow(tree, step, inverse_mass, energy0, log_u[leaf], store[leaf], check[leaf], density)
    return tree


def leaves_per_call(num_leaves: int) -> int:
    """How many leaves one call of the leaf step grows: all of a small subtree, else LEAVES_PER_CALL."""
    return min(num_leaves, LEAVES_PER_CALL)


def run_lengths(max_tree_depth: int) -> list[int]:
    """The lengths of run (leaves per call) that trees up to ``max_tree_depth`` ask the leaf step for."""
    return sorted({leaves_per_call(2**depth) for depth in range(max_tree_depth)})


def example_leaves(point: Point, inverse_mass: torch.Tensor, leaves: int, slots: int) -> tuple:
    """Arguments of the leaf step for a run of ``leaves`` from ``point``, laid out as every later run's: what
    a compiled run is traced at."""
    start = Point(point.z, torch.ones_like(point.z), point.logp, point.grad)
    log_u = point.logp.new_zeros(leaves, *point.logp.shape)
    return (empty_subtree(start, slots), torch.full_like(point.logp, 1e-3), inverse_mass,
            -point.logp + 0.5 * point.z.shape[1], log_u, *slot_masks(0, leaves, slots, point.z.device))


def subtree_slots(max_tree_depth: int) -> int:
    """Checkpoint slots for the largest subtree, 2^(max_tree_depth - 1) leaves: one compiled leaf for all."""
    return max(max_tree_depth - 1, 1)


Grow = Callable[..., Subtree]  # grow_leaves() with the density bound: eager, or compiled with it as one graph


def build_subtree(edge: Point, step: torch.Tensor, num_leaves: int, energy0: torch.Tensor, uniforms: torch.Tensor,
                  inverse_mass: torch.Tensor, grow_leaf: Grow, slots: int) -> Subtree:
    """``num_leaves`` leapfrog steps from ``edge``; a chain stops extending once its subtree is invalid."""
    tree = empty_subtree(edge, slots)
    log_u = uniforms.log().T.clone(memory_format=torch.contiguous_format)  # rows, every one laid out alike
    run = leaves_per_call(num_leaves)
    for first in range(0, num_leaves, run):
        store, check = slot_masks(first, run, slots, edge.z.device)
        tree = grow_leaf(tree, step, inverse_mass, energy0, log_u[first:first + run], store, check)
    return tree


@dataclass
class Transition:
    """Where each chain went, and what it took (ArviZ's sample_stats names)."""

    point: Point
    diverging: torch.Tensor
    tree_depth: torch.Tensor
    n_steps: torch.Tensor
    energy: torch.Tensor
    acceptance_rate: torch.Tensor


def nuts_transition(start: Point, step_size: torch.Tensor, metric: Metric, grow_leaf: Grow,
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
                            metric.inverse_mass, grow_leaf, subtree_slots(max_tree_depth))
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
        m = metric.inverse_mass
        active = valid & ~is_turning(velocity(m, left.r), velocity(m, right.r), r_sum)
        if not bool(active.any()):  # the one host sync of a doubling
            break
    return Transition(proposal, diverging, depth, n_steps, -proposal.logp + metric.kinetic(proposal.r),
                      accept_sum / n_steps.clamp(min=1))
