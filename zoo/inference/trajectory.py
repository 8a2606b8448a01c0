"""NUTS transitions for C chains at once, as tensor code over (C, D) positions.

The iterative, unrolled design of TensorFlow Probability's ``NoUTurnSampler``, without its lockstep: each
chain is at its own leaf (leapfrog step) of its own transition. Where a leaf falls in its tree (which
doubling, which checkpoints it stores and checks, whether it opens or closes a doubling) is a row of one
table, gathered per chain, so one step of compiled code grows a run of leaves of every chain wherever
each is: a doubling's start (its direction, its edge) and end (the merge into the tree, the U-turn check
over the whole trajectory) happen inside the run. A chain whose trajectory has ended waits only for the
run's end, where the host takes its transition and it starts the next, not for the batch's slowest
chain. The only host sync is "has any chain finished?" after each run.

Within a doubling of 2^d leapfrog steps the proposal is drawn multinomially (progressive uniform sampling
over the leaves), the generalised U-turn criterion is checked at each completed sub-subtree through
momentum checkpoints indexed by the leaf's bits, and a leaf whose energy error passes 1,000 is a
divergence. A subtree that turns or diverges is rejected and ends that chain's trajectory; a valid one
replaces the proposal with probability min(1, w_new / w_old) (biased progressive sampling), as in Stan.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

import torch

from ._random import uniforms

MAX_ENERGY_ERROR = 1000.0
SLOTS = 64  # random-counter slots per transition: the momentum, then one per doubling
LEAVES_PER_CALL = 8  # leaves per chain per call of the compiled step: they share its fixed cost


class Point(NamedTuple):
    """Positions, momenta, log densities and their gradients of C chains."""

    z: torch.Tensor
    r: torch.Tensor
    logp: torch.Tensor
    grad: torch.Tensor

    def where(self, mask: torch.Tensor, other: Point) -> Point:
        """This point for the chains in ``mask``, ``other`` elsewhere."""
        return _where(mask, self, other)


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
            eye = torch.eye(inverse_mass.shape[-1], dtype=inverse_mass.dtype, device=inverse_mass.device)
            cholesky = torch.linalg.cholesky(inverse_mass)
            self.momentum_factor = torch.linalg.solve_triangular(cholesky.mT, eye, upper=True).contiguous()
        else:
            self.momentum_factor = inverse_mass.rsqrt().contiguous()

    def kinetic(self, r: torch.Tensor) -> torch.Tensor:
        return kinetic(self.inverse_mass, r)

    def momentum(self, normal: torch.Tensor) -> torch.Tensor:
        """Momenta with covariance M from standard normals (C, D)."""
        return velocity(self.momentum_factor, normal)  # the factor applied as M^-1 is in a velocity


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


class Leaf(NamedTuple):
    """Where each chain's next leaf falls in its tree: whether it is a leaf at all (the chain is still
    growing), whether it opens or closes its doubling, and the checkpoint slots it stores and checks against
    (slots, C), laid out as the checkpoints (slots, C, D) that they mask."""

    live: torch.Tensor
    opens: torch.Tensor
    closes: torch.Tensor
    store: torch.Tensor
    check: torch.Tensor


class Schedule(NamedTuple):
    """Where each leaf falls in the trajectory, one row per leaf: the random counter of its doubling (an
    offset from the transition's) and the three columns it draws, whether it opens or closes its doubling, and
    which checkpoint slots it stores (even leaves of a doubling) and checks against (odd ones): these two
    (slots, leaves), one column per leaf."""

    counter: torch.Tensor
    columns: torch.Tensor
    opens: torch.Tensor
    closes: torch.Tensor
    store: torch.Tensor
    check: torch.Tensor

    def at(self, leaf: torch.Tensor, going: torch.Tensor) -> Leaf:
        """Each chain's place at its ``leaf`` (C,); a chain not ``going`` is at no leaf, and changes nothing."""
        return Leaf(going, self.opens[leaf] & going, self.closes[leaf] & going, self.store[:, leaf] & going,
                    self.check[:, leaf] & going)


@lru_cache(maxsize=64)
def schedule(max_tree_depth: int, device: torch.device) -> Schedule:
    """The schedule of a whole trajectory, leaves 0 .. 2^max_tree_depth - 2. Doubling d is leaves
    2^d - 1 .. 2^(d+1) - 2; it draws at counter offset 1 + d: column 1 its direction, column 2 the
    acceptance of its subtree, column 3 + j the proposal test of its leaf j."""
    slots = subtree_slots(max_tree_depth)
    index = torch.arange(slots)
    none = torch.zeros(slots, dtype=torch.bool)
    rows = []
    for leaf in range(2**max_tree_depth - 1):
        depth = (leaf + 1).bit_length() - 1
        j = leaf + 1 - 2**depth
        low, high = _checkpoints(j)
        rows.append((1 + depth, (1, 2, 3 + j), j == 0, j == 2**depth - 1,
                     index == high if j % 2 == 0 else none, (index >= low) & (index <= high) if j % 2 else none))
    counter, columns, opens, closes, store, check = zip(*rows, strict=True)
    flags = (torch.tensor(f, device=device) for f in (counter, columns, opens, closes))
    return Schedule(*flags, torch.stack(store, 1).to(device), torch.stack(check, 1).to(device))


def subtree_slots(max_tree_depth: int) -> int:
    """Checkpoint slots for the largest subtree, 2^(max_tree_depth - 1) leaves: one compiled step for all."""
    return max(max_tree_depth - 1, 1)


class Subtree(NamedTuple):
    """The doubling under way: its last leaf, proposal, log weight, momentum sum, whether it turned or
    diverged inside, and the momenta at its checkpoints, their velocities and the running sums there
    (slots, C, D)."""

    last: Point
    proposal: Point
    log_weight: torch.Tensor
    r_sum: torch.Tensor
    invalid: torch.Tensor
    saved_r: torch.Tensor
    saved_v: torch.Tensor
    saved_sum: torch.Tensor


class Tree(NamedTuple):
    """A transition under way for every chain: the trajectory's ends, its proposal, log weight and momentum
    sum, whether it still doubles, the doubling being built, and the energy the trajectory started at.
    Between transitions the proposal is the chain's point."""

    left: Point
    right: Point
    proposal: Point
    log_weight: torch.Tensor
    r_sum: torch.Tensor
    active: torch.Tensor
    forward: torch.Tensor  # the direction of the doubling under way
    diverging: torch.Tensor
    depth: torch.Tensor
    n_steps: torch.Tensor
    accept_sum: torch.Tensor
    sub: Subtree
    energy0: torch.Tensor


def start_tree(start: Point, energy0: torch.Tensor, checkpoints: tuple[torch.Tensor, ...]) -> Tree:
    """A trajectory of one point, with arrays for the momentum checkpoints (saved_r, saved_v, saved_sum) whose
    values do not matter: a doubling stores every checkpoint it checks before it checks it."""
    logp = start.logp
    true = torch.ones_like(logp, dtype=torch.bool)
    sub = Subtree(start, start, torch.full_like(logp, -torch.inf), torch.zeros_like(start.r), ~true, *checkpoints)
    return Tree(start, start, start, torch.zeros_like(logp), start.r, true, true, ~true,
                torch.zeros_like(logp, dtype=torch.long), torch.zeros_like(logp), torch.zeros_like(logp), sub, energy0)


def restart(tree: Tree, r0: torch.Tensor, inverse_mass: torch.Tensor) -> Tree:
    """A new trajectory from each chain's point (the last one's proposal) with momenta ``r0``."""
    point = tree.proposal
    start = Point(point.z, r0, point.logp, point.grad)
    return start_tree(start, -point.logp + kinetic(inverse_mass, r0), tree.sub[-3:])


def grow(tree: Tree, step_size: torch.Tensor, inverse_mass: torch.Tensor, u: torch.Tensor, at: Leaf,
         density: Density) -> Tree:
    """One more leaf of every chain's trajectory, where ``at`` puts it: a new
    doubling's start, a leapfrog step, multinomial sampling of the proposal, the U-turn checks at the
    checkpoints the leaf closes, and at a doubling's end its merge into the tree. ``u`` (C, 3): the
    uniforms of its columns. A chain that has stopped keeps its tree."""
    opens = at.opens
    forward = torch.where(opens, u[:, 0] < 0.5, tree.forward)
    sub = tree.sub
    last = tree.right.where(forward, tree.left).where(opens, sub.last)
    sub_weight = torch.where(opens, -torch.inf, sub.log_weight)
    sub_r_sum = torch.where(opens.unsqueeze(-1), 0.0, sub.r_sum)
    invalid = sub.invalid & ~opens
    alive = tree.active & ~invalid & at.live

    new = leapfrog(last, torch.where(forward, step_size, -step_size), inverse_mass, density)
    v = velocity(inverse_mass, new.r)
    error = torch.nan_to_num(-new.logp + 0.5 * (new.r * v).sum(-1) - tree.energy0, nan=torch.inf)
    diverged = alive & (error > MAX_ENERGY_ERROR)
    total = torch.logaddexp(sub_weight, -error)
    sub_proposal = new.where(alive & (u[:, 2].log() < -error - total), sub.proposal)
    sub_r_sum = torch.where(alive.unsqueeze(-1), sub_r_sum + new.r, sub_r_sum)
    put = at.store.unsqueeze(-1)  # (slots, C, 1)
    saved_r = torch.where(put, new.r, sub.saved_r)
    saved_v = torch.where(put, v, sub.saved_v)
    saved_sum = torch.where(put, sub_r_sum, sub.saved_sum)
    span = sub_r_sum - saved_sum + saved_r  # (slots, C, D): the momenta of each sub-subtree this leaf closes
    turned = (is_turning(saved_v, v, span) & at.check).any(0)
    invalid = invalid | (alive & turned) | diverged
    last = new.where(alive, last)
    sub_weight = torch.where(alive, total, sub_weight)
    sub = Subtree(last, sub_proposal, sub_weight, sub_r_sum, invalid, saved_r, saved_v, saved_sum)

    # the doubling's end: its subtree joins the trajectory if it is valid, and the whole may have turned
    closes = at.closes
    was = tree.active
    right = last.where(was & forward, tree.right)
    left = last.where(was & ~forward, tree.left)
    valid = was & ~invalid
    proposal = sub_proposal.where(valid & (u[:, 1].log() < sub_weight - tree.log_weight), tree.proposal)
    log_weight = torch.where(valid, torch.logaddexp(tree.log_weight, sub_weight), tree.log_weight)
    r_sum = torch.where(valid.unsqueeze(-1), tree.r_sum + sub_r_sum, tree.r_sum)
    active = valid & ~is_turning(velocity(inverse_mass, left.r), velocity(inverse_mass, right.r), r_sum)
    closed = tree._replace(left=left, right=right, proposal=proposal, log_weight=log_weight, r_sum=r_sum,
                           active=active, forward=forward, depth=tree.depth + was, sub=sub)
    still = tree._replace(forward=forward, sub=sub)
    tree = Tree(*(_where(closes, a, b) for a, b in zip(closed, still, strict=True)))
    return tree._replace(diverging=tree.diverging | diverged, n_steps=tree.n_steps + alive,
                         accept_sum=tree.accept_sum + torch.where(alive, torch.exp(-error).clamp(max=1.0), 0.0))


def _where(mask: torch.Tensor, a, b):
    """``a`` for the chains in ``mask`` (C,), ``b`` elsewhere, through (named) tuples of (C, ...) tensors."""
    if isinstance(a, torch.Tensor):
        return a if a is b else torch.where(mask.view(-1, *[1] * (a.dim() - 1)), a, b)
    return type(a)(*(_where(mask, x, y) for x, y in zip(a, b, strict=True)))


class Progress(NamedTuple):
    """Where each chain is: its next leaf (-1: its next transition's start), the transitions it has
    finished, and its leapfrog steps so far."""

    pos: torch.Tensor
    done: torch.Tensor
    leapfrogs: torch.Tensor


class Momenta(NamedTuple):
    """Each chain's standard normals for a block of its transitions from ``first`` (C, block, D), and the
    factor that turns one into a momentum under the metric (``Metric.momentum_factor``)."""

    factor: torch.Tensor
    normals: torch.Tensor
    first: torch.Tensor


def advance(tree: Tree, progress: Progress, barrier: torch.Tensor, step_size: torch.Tensor,
            inverse_mass: torch.Tensor, momenta: Momenta, keys: torch.Tensor, table: Schedule,
            density: Density) -> tuple[Tree, Progress, torch.Tensor, Transition]:
    """LEAVES_PER_CALL leaves of every chain's own trajectory in one call: compiled, one launch runs several
    leapfrog steps and the doublings' bookkeeping between them, and the call's fixed cost is shared by them.

    A chain at leaf -1 that has finished fewer than ``barrier`` transitions starts its next: its tree
    restarted at its point with momenta from its normals. A chain whose trajectory ends (it turned,
    diverged, or reached the deepest tree) stops there, counts the transition and goes back to leaf -1.
    Returns the trees, the progress, which chains finished a transition, and what it took (for those: the
    host takes them before the next call)."""
    pos, done, leapfrogs = progress
    parked = done >= barrier
    begins = (pos < 0) & ~parked
    chain = torch.arange(pos.shape[0], device=pos.device)
    r0 = velocity(momenta.factor, momenta.normals[chain, done - momenta.first])
    tree = _where(begins, restart(tree, r0, inverse_mass), tree)
    pos = torch.where(begins, 0, pos)
    last = table.counter.shape[0]  # leaves of the deepest tree
    leaves = (pos.unsqueeze(-1) + torch.arange(LEAVES_PER_CALL, device=pos.device)).clamp(max=last - 1)
    u = uniforms(keys, (done * SLOTS).unsqueeze(-1) + table.counter[leaves], table.columns[leaves],
                 tree.r_sum.dtype, per_chain=True)  # (C, leaves, 3): a chain that stops draws numbers it does not use
    for leaf in range(LEAVES_PER_CALL):
        going = _growing(tree, pos, parked, last)
        tree = grow(tree, step_size, inverse_mass, u[:, leaf], table.at(pos.clamp(max=last - 1), going), density)
        pos = pos + going
    finished = ~parked & ~_growing(tree, pos, parked, last)
    moved = transition(tree, inverse_mass)
    progress = Progress(torch.where(finished, -1, pos), done + finished,
                        leapfrogs + torch.where(finished, moved.n_steps.long(), 0))
    return tree, progress, finished, moved


def _growing(tree: Tree, pos: torch.Tensor, parked: torch.Tensor, last: int) -> torch.Tensor:
    return ~parked & (pos < last) & tree.active & ~tree.sub.invalid


def first_tree(point: Point, max_tree_depth: int) -> Tree:
    """The tree of chains that have not started, at their starting points. No two of its tensors share
    memory: a compiled step is specialised to how its inputs alias, and every later call gets distinct ones."""
    checkpoints = tuple(point.r.new_zeros(subtree_slots(max_tree_depth), *point.r.shape) for _ in range(3))
    tree = start_tree(point, torch.zeros_like(point.logp), checkpoints)
    return torch.utils._pytree.tree_map(torch.clone, tree)


def example_advance(point: Point, metric: Metric, block: int, keys: torch.Tensor, max_tree_depth: int) -> tuple:
    """Arguments of ``advance`` for chains about to start, with normals for ``block`` transitions, laid out as
    every later call's: what a compiled call is traced at."""
    none = torch.zeros_like(point.logp, dtype=torch.long)
    normals = torch.ones_like(point.z).unsqueeze(1).repeat(1, block, 1)
    return (first_tree(point, max_tree_depth), Progress(none - 1, none.clone(), none.clone()),
            torch.tensor(1, device=none.device), torch.full_like(point.logp, 1e-3), metric.inverse_mass,
            Momenta(metric.momentum_factor, normals, none.clone()), keys, schedule(max_tree_depth, point.z.device))


class Transition(NamedTuple):
    """What each chain's last transition took (ArviZ's sample_stats names); its point is the tree's proposal."""

    diverging: torch.Tensor
    tree_depth: torch.Tensor
    n_steps: torch.Tensor
    energy: torch.Tensor
    acceptance_rate: torch.Tensor


def transition(tree: Tree, inverse_mass: torch.Tensor) -> Transition:
    """The transition of chains whose trajectory has ended. One that stopped inside a doubling (its subtree
    turned or diverged, and was rejected) counts that doubling in its depth."""
    proposal = tree.proposal
    return Transition(tree.diverging, tree.depth + (tree.active & tree.sub.invalid), tree.n_steps,
                      -proposal.logp + kinetic(inverse_mass, proposal.r), tree.accept_sum / tree.n_steps.clamp(min=1))
