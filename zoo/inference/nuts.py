"""``nuts``: many NUTS chains as one (C, D) tensor program over the model's flat log density, with Stan's
windowed warmup. Pyro's own kernel stays available as ``pyro-nuts``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._errors import ZooError
from ._base import FitResult, check_positive, register_backend
from .adaptation import DualAveraging
from .batched import ChainRun, Chains, check_chain_options, start_chains
from .trajectory import SLOTS, Momenta, Progress, Transition, advance, example_advance, first_tree, schedule


@register_backend
@dataclass
class NUTS:
    """The No-U-Turn sampler, every chain advanced at once. ``num_samples`` (given to ``fit``) is the
    number of draws per chain.

    Parameters
    ----------
    num_warmup : int
        Warmup iterations per chain (Stan's windows: step size by dual averaging throughout, the mass
        matrix re-estimated at the end of each slow window), discarded.
    num_chains : int
        Chains, run together as one batch; any number.
    target_accept : float
        The acceptance rate dual averaging aims for; raise it (0.9, 0.95) when there are divergences.
    max_tree_depth : int
        At most 2^max_tree_depth leapfrog steps per iteration.
    dense_mass : bool
        A dense inverse mass matrix (for correlated posteriors of up to 2,000 coordinates), else diagonal.
    pooled_mass : bool
        Estimate the mass matrix from every chain's warmup draws together (steadier with many chains);
        off, each chain adapts alone, and a chain's draws are the same whatever runs beside it.
    init_spread : float
        Chains start at the model's initial point plus uniform(-init_spread, init_spread) in the
        unconstrained coordinates (a start where the density is not finite is redrawn).
    density : {"auto", "traced", "compiled", "eager"}
        How the log density runs: its tensor operations traced once and replayed without Pyro
        (``"traced"``), that trace fused by ``torch.compile`` with the tree's bookkeeping (``"compiled"``: a
        start of seconds to a minute, then many times faster per step), or the Pyro model on every call
        (``"eager"``). ``"auto"`` starts traced and compiles when the rest of the run is projected to take
        more than 20,000 leapfrog steps, checked at iterations 25, 50, 100, 200... (a decision made from the
        steps, not the clock, so a seed gives the same draws). A model whose trace does not reproduce it
        (control flow on the latents' values) runs eagerly; ``post.info["density"]`` says which ran.
    """

    name: ClassVar[str] = "nuts"
    num_warmup: int = 500
    num_chains: int = 4
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    pooled_mass: bool = True
    init_spread: float = 1.0
    density: str = "auto"

    def check(self) -> None:
        check_chain_options(self)
        check_positive(f"{self.name}: max_tree_depth", self.max_tree_depth)
        if self.max_tree_depth > SLOTS - 2:
            raise ZooError(f"{self.name}: max_tree_depth must be at most {SLOTS - 2}, got {self.max_tree_depth}")

    def fit(self, problem) -> FitResult:
        self.check()
        chains = start_chains(problem, self.name, self.num_chains, self.init_spread, self.density, self.dense_mass)
        return _NUTSRun(self, chains, problem.num_samples).run(problem)


class _NUTSRun(ChainRun):
    """Each chain grows its own trajectory and starts its next as soon as the host has taken the last, so a
    batch waits on its slowest chain only at the warmup's window ends (the pooled metric), at the warmup's
    end and at the run's end, not at every iteration. Per-chain step sizes by dual averaging, restarted at
    each new metric."""

    name = "nuts"
    stat_names = ("diverging", "tree_depth", "n_steps", "energy", "step_size", "acceptance_rate", "lp")

    def __init__(self, config: NUTS, chains: Chains, num_samples: int):
        self.config = config
        super().__init__(chains, config.num_warmup, num_samples, config.dense_mass, config.pooled_mass,
                         config.density)
        self.adapt = DualAveraging(config.target_accept, self.step_size.log())
        self.depth = torch.zeros(1, dtype=torch.long)
        self.tree = first_tree(self.point, config.max_tree_depth)
        none = torch.zeros_like(self.leapfrogs)
        self.progress = Progress(none - 1, none, self.leapfrogs)
        # each chain's normals for its next `block` transitions (a chain finishes at most one per call)
        self.normals, self.normals_from = self.normals_block(none), none.clone()  # no tensor is two inputs
        self.calls = 0  # since the normals were drawn
        self.barriers = sorted({end for _, end in self.windows} | {self.num_warmup, self.num_warmup + num_samples})
        self.table = schedule(config.max_tree_depth, self.point.z.device)

    def step(self, t: int) -> None:
        """Leaves of every chain's trajectory until each has finished transition t; a chain ahead goes on
        up to the next barrier."""
        barrier = torch.tensor(next(b for b in self.barriers if b > t), device=self.point.z.device)
        while True:
            if self.calls == self.block:  # drawn on the host: inductor's C++ code hashed rows of 20 and 24
                # int64 columns wrongly past the 16th (torch 2.13; right for 3, 8, 16 and 32)
                done = self.progress.done
                self.normals, self.normals_from, self.calls = self.normals_block(done), done.clone(), 0
            momenta = Momenta(self.metric.momentum_factor, self.normals, self.normals_from)
            self.tree, self.progress, finished, moved = self.move(
                self.tree, self.progress, barrier, self.step_size, self.metric.inverse_mass, momenta,
                self.random.keys, self.table)
            self.calls += 1
            if bool(finished.any()):  # the one host sync of a call
                self._take(finished, moved, warmup=t < self.num_warmup)
                if int(self.progress.done.min()) > t:
                    break
        self.leapfrogs = self.progress.leapfrogs
        if self.window < len(self.windows) and t + 1 == self.windows[self.window][1]:
            # Stan: a new metric, a new step-size search, dual averaging restarted
            self.switch_metric()
            self.step_size = self.search_step_size(self.step_size, t + 1)
            self.adapt.restart(self.step_size)

    def _take(self, finished: torch.Tensor, moved: Transition, warmup: bool) -> None:
        """The transitions of the ``finished`` chains: kept after warmup, adapted to during it."""
        k = self.progress.done - finished.long()  # each one's number
        self.point = self.tree.proposal  # a finished chain's point; read only for those (and all at a barrier)
        self.depth = moved.tree_depth  # read (a host sync) only when the progress bar shows it
        if not warmup:
            self.keep(dict(diverging=moved.diverging, tree_depth=moved.tree_depth, n_steps=moved.n_steps,
                           energy=moved.energy, step_size=self.step_size, acceptance_rate=moved.acceptance_rate,
                           lp=self.point.logp), finished)
            return
        self.adapt.update(moved.acceptance_rate, finished)
        self.step_size = torch.where(finished, self.adapt.step_size, self.step_size)
        if self.window < len(self.windows):
            start, end = self.windows[self.window]
            self.mass.add(self.point.z.detach(), finished & (k >= start) & (k < end))
        self.step_size = torch.where(finished & (k + 1 == self.num_warmup), self.adapt.final_step_size,
                                     self.step_size)

    def bind_move(self, compiled: bool):
        """LEAVES_PER_CALL leaves of every chain's trajectory; ``compiled``: the leapfrog steps, the trees'
        bookkeeping and the traced density as one graph."""
        chains = self.chains
        if not compiled:
            return chains.bind(advance)
        example = example_advance(chains.point, self.metric, self.block, chains.random.keys,
                                  self.config.max_tree_depth)
        # the new point and the progress are checked; the energy error, a difference of large numbers, differs
        # by rounding
        return chains.bind(advance, example, lambda out: (out[0].sub.last, out[1], out[2]))

    def postfix(self) -> dict:
        return {"step": f"{float(self.step_size.mean()):.3g}", "depth": int(self.depth.max())}
