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
from .trajectory import SLOTS, example_leaves, first_tree, grow_leaves, nuts_transition


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
    """Per-chain step sizes by dual averaging, restarted at each new metric."""

    name = "nuts"
    stat_names = ("diverging", "tree_depth", "n_steps", "energy", "step_size", "acceptance_rate", "lp")

    def __init__(self, config: NUTS, chains: Chains, num_samples: int):
        self.config = config
        super().__init__(chains, config.num_warmup, num_samples, config.dense_mass, config.pooled_mass,
                         config.density)
        self.adapt = DualAveraging(config.target_accept, self.step_size.log())
        self.depth = torch.zeros(1, dtype=torch.long)
        self.tree = first_tree(self.point, config.max_tree_depth)

    def step(self, t: int) -> None:
        c = self.config
        self.tree, moved = nuts_transition(self.tree, self.step_size, self.metric, self.momentum(t), self.move,
                                           self.random.keys, t, c.max_tree_depth)
        self.point = moved.point
        self.depth = moved.tree_depth  # read (a host sync) only when the progress bar shows it
        self.leapfrogs += moved.n_steps.long()
        if t >= c.num_warmup:
            self.keep(dict(diverging=moved.diverging, tree_depth=moved.tree_depth, n_steps=moved.n_steps,
                           energy=moved.energy, step_size=self.step_size, acceptance_rate=moved.acceptance_rate,
                           lp=moved.point.logp))
            return
        self.adapt.update(moved.acceptance_rate)
        self.step_size = self.adapt.step_size
        if self.new_metric(t):  # Stan: a new metric, a new step-size search, dual averaging restarted
            self.step_size = self.search_step_size(self.step_size, t + 1)
            self.adapt.restart(self.step_size)
        if t + 1 == c.num_warmup:
            self.step_size = self.adapt.final_step_size

    def bind_move(self, compiled: bool):
        """A run of leaves of the trajectory for all chains; ``compiled``: the leapfrog steps, the tree's
        bookkeeping and the traced density as one graph, which serves every run of a tree (all one length)."""
        chains = self.chains
        if not compiled:
            return chains.bind(grow_leaves)
        example = example_leaves(chains.point, self.metric.inverse_mass, chains.random.keys,
                                 self.config.max_tree_depth)
        # the new point is checked; the energy error, a difference of large numbers, differs by rounding
        return chains.bind(grow_leaves, example, lambda tree: tree.sub.last)

    def postfix(self) -> dict:
        return {"step": f"{float(self.step_size.mean()):.3g}", "depth": int(self.depth.max())}
