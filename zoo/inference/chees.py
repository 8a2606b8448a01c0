"""``chees``: ChEES-HMC (Hoffman, Radul & Sountsov 2021), jittered HMC in which every chain takes the same
number of leapfrog steps per iteration: no tree, no per-chain stopping, so a batch of hundreds of chains
wastes nothing waiting on its slowest member.

The step size, shared by all chains, follows dual averaging of the harmonic-mean acceptance probability
towards 0.651 (Beskos et al. 2013); the trajectory length T follows Adam (no momentum) up the gradient of
the ChEES criterion, E[(|x' - E x'|^2 - |x - E x|^2)^2] / 4, estimated across the chains and weighted by
their acceptance probabilities, each gradient clipped to 3 times Adam's running scale. Each iteration runs
ceil(h T / step) steps with h from a Halton sequence; the diagonal or dense metric comes from Stan's windows
over all chains' warmup draws. A chain that accepts nothing in a warmup window (the shared step size is too
large where it started), or sits in a mode of negligible mass, restarts from another chain's point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._errors import ZooError
from ._base import FitResult, check_positive, register_backend
from .adaptation import DualAveraging
from .batched import ChainRun, Chains, check_chain_options, start_chains
from .trajectory import MAX_ENERGY_ERROR, SLOTS, Point, leapfrog, velocity

ADAM_BETA2 = 0.95
GRAD_CLIP = 3.0  # a gradient at most this many times Adam's running scale
LOG_DENSITY_GAP = 10.0  # nats below the chains' median, beyond the typical set's spread, that restart a chain


def halton(index: int, base: int = 2) -> float:
    """The ``index``-th (from 1) point of the van der Corput sequence in ``base``: an even spread in (0, 1)."""
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


@register_backend
@dataclass
class ChEES:
    """ChEES-HMC: all chains in lockstep, the trajectory length learnt across them. ``num_samples``
    (given to ``fit``) is the number of draws per chain.

    Parameters
    ----------
    num_warmup : int
        Warmup iterations: step size, trajectory length and metric adapted, the draws discarded.
    num_chains : int
        Chains, at least 2: the criterion is estimated across them (the more, the steadier; 64 to
        thousands on a GPU).
    target_accept : float
        The harmonic mean of the chains' acceptance probabilities that dual averaging aims for.
    max_leapfrog_steps : int
        The most leapfrog steps of one iteration.
    learning_rate : float
        Adam's learning rate on log T.
    dense_mass, init_spread, density
        As for ``nuts``.
    """

    name: ClassVar[str] = "chees"
    num_warmup: int = 500
    num_chains: int = 64
    target_accept: float = 0.651
    max_leapfrog_steps: int = 1000
    learning_rate: float = 0.025
    dense_mass: bool = False
    init_spread: float = 1.0
    density: str = "auto"

    def check(self) -> None:
        check_chain_options(self)
        if self.num_chains < 2:
            raise ZooError(f"{self.name}: the trajectory length is learnt across chains, so num_chains must be at "
                           f"least 2 (64 or more is usual), got {self.num_chains}; for one chain use nuts")
        check_positive(f"{self.name}: max_leapfrog_steps", self.max_leapfrog_steps)
        check_positive(f"{self.name}: learning_rate", self.learning_rate, integer=False)

    def fit(self, problem) -> FitResult:
        self.check()
        chains = start_chains(problem, self.name, self.num_chains, self.init_spread, self.density, self.dense_mass)
        run = _ChEESRun(self, chains, problem.num_samples)
        result = run.run(problem)
        result.info["trajectory_length"] = run.length
        result.info["chains_restarted"] = run.restarted  # in warmup, stuck: from other chains' points
        return result


class _ChEESRun(ChainRun):
    name = "chees"
    stat_names = ("diverging", "n_steps", "energy", "step_size", "acceptance_rate", "lp")

    def __init__(self, config: ChEES, chains: Chains, num_samples: int):
        self.config = config
        super().__init__(chains, config.num_warmup, num_samples, config.dense_mass, True, config.density)
        self.step_size = self._shared(*self.pool(self.step_size))  # every process's chains' searches
        self.adapt = DualAveraging(config.target_accept, self.step_size[:1].log())
        self.length = float(self.step_size[0])  # T, starting at one step: Adam's iterate during warmup
        self.log_length_avg = math.log(self.length)  # its running average: T after warmup
        self.adam_v, self.updates = 0.0, 0
        self.num_steps = 1
        # stuck chains are checked where the first window opens and wherever one closes
        self.checks = {self.windows[0][0]} | {end for _, end in self.windows} if self.windows else set()
        self.accepted = torch.zeros_like(self.point.logp, dtype=torch.long)
        self.restarted = 0

    def _shared(self, step: torch.Tensor) -> torch.Tensor:
        """One step size for all chains (the geometric mean of the values given), as a (C,) tensor."""
        return step.log().mean().exp().expand(self.point.z.shape[0]).clone()

    def step(self, t: int) -> None:
        c, start, metric = self.config, self.point, self.metric
        h = halton(t + 1)
        step = float(self.step_size[0])
        self.num_steps = max(1, min(c.max_leapfrog_steps, math.ceil(h * self.length / step)))
        r0 = self.momentum(t)
        begin = point = Point(start.z, r0, start.logp, start.grad)
        for _ in range(self.num_steps):
            point = self.move(point, self.step_size, metric.inverse_mass)
        error = torch.nan_to_num(-point.logp + metric.kinetic(point.r) + start.logp - metric.kinetic(r0),
                                 nan=torch.inf)
        accept_prob = torch.exp(-error).clamp(max=1.0)
        diverging = error > MAX_ENERGY_ERROR
        accepted = self.random.uniform(t * SLOTS + 1, 1, start.z.dtype)[:, 0].log() < -error
        self.point = point.where(accepted, begin)
        self.leapfrogs += self.num_steps
        if t >= c.num_warmup:
            self.keep(dict(diverging=diverging, n_steps=torch.full_like(error, self.num_steps),
                           energy=-self.point.logp + metric.kinetic(self.point.r), step_size=self.step_size,
                           acceptance_rate=accept_prob, lp=self.point.logp))
            return
        self.accepted += accepted
        # the criterion and the acceptance are estimated across every process's chains
        v = velocity(metric.inverse_mass, point.r)
        x, proposal, v, accept_prob, diverging = self.pool(start.z, point.z, v, accept_prob, diverging)
        self._adapt_length(h, x, proposal, v, accept_prob, diverging)
        if t + 1 in self.checks:
            self._restart_stuck(t)
        kept = ~diverging
        harmonic = kept.sum() / (1.0 / accept_prob.clamp(min=1e-10))[kept].sum() if bool(kept.any()) else 0.0
        self.adapt.update(torch.as_tensor(harmonic, dtype=error.dtype).reshape(1))
        self.step_size = self._shared(self.adapt.step_size)
        if self.new_metric(t):
            self.step_size = self._shared(*self.pool(self.search_step_size(self.step_size, t + 1)))
            self.adapt.restart(self.step_size[:1])
        if t + 1 == c.num_warmup:
            self.step_size = self._shared(self.adapt.final_step_size)
            self.length = math.exp(self.log_length_avg)
        step = float(self.step_size[0])
        self.length = min(max(self.length, step), c.max_leapfrog_steps * step)

    def _adapt_length(self, h: float, x: torch.Tensor, proposal: torch.Tensor, v: torch.Tensor,
                      accept_prob: torch.Tensor, diverging: torch.Tensor) -> None:
        """One Adam step of log T up the ChEES gradient, from the chains' points ``x``, their proposals and
        the proposals' velocities ``v``; the iterate runs the warmup's trajectories, its running average
        (weight t^-1/2, as BlackJAX and TFP) is the T kept after."""
        weight = torch.where(diverging | ~torch.isfinite(proposal).all(-1), 0.0, accept_prob)
        if float(weight.sum()) <= 0:
            return
        x_new = torch.where(weight.unsqueeze(-1) > 0, proposal, x)
        centred_new = x_new - (weight.unsqueeze(-1) * x_new).sum(0) / weight.sum()
        centred_old = x - x.mean(0)
        change = (centred_new**2).sum(-1) - (centred_old**2).sum(-1)
        per_chain = h * self.length * change * (centred_new * v).sum(-1)  # d ChEES / d log T
        grad = float((weight * torch.nan_to_num(per_chain)).sum() / weight.sum())
        if self.updates:  # an outlying chain's gradient would hold Adam's scale up for dozens of iterations
            bound = GRAD_CLIP * self._adam_scale()
            grad = max(-bound, min(bound, grad))
        self.updates += 1
        self.adam_v = ADAM_BETA2 * self.adam_v + (1 - ADAM_BETA2) * grad**2
        update = self.config.learning_rate * grad / (self._adam_scale() + 1e-8)
        self.length = math.exp(math.log(self.length) + update)
        average = self.updates ** -0.5
        self.log_length_avg = (1 - average) * self.log_length_avg + average * math.log(self.length)

    def _adam_scale(self) -> float:
        """Adam's running gradient scale: the root of its bias-corrected second moment."""
        return math.sqrt(self.adam_v / (1 - ADAM_BETA2**self.updates))

    def _restart_stuck(self, t: int) -> None:
        """Chains that accepted nothing since the last check (the shared step size is too large where they
        are: they diverge every time), or whose log density lies far below the chains' median (a local mode
        of negligible mass, such as a mixture component collapsed onto one point, which would hold the
        shared step size down), restart from the points of chains picked at random among the others: all
        chains are alike during warmup, and its draws are discarded."""
        u = self.random.uniform(t * SLOTS + 2, 1, self.point.z.dtype)[:, 0]
        accepted, u, *point = self.pool(self.accepted, u, *self.point)  # every process's chains
        point = Point(*point)
        self.accepted = torch.zeros_like(self.accepted)
        logp = torch.nan_to_num(point.logp, nan=-torch.inf)
        gap = LOG_DENSITY_GAP + 6 * math.sqrt(point.z.shape[1] / 2)  # 6 sd of log p in a typical set
        stuck = (accepted == 0) | (logp < logp.median() - gap)
        kept = (~stuck).nonzero().flatten()
        if not bool(stuck.any()) or len(kept) == 0:
            return
        donor = kept[(u * len(kept)).long().clamp(max=len(kept) - 1)]
        ours = slice(self.random.first, self.random.first + len(self.accepted))
        self.point = self.point.where(~stuck[ours], Point(*(a[donor[ours]] for a in point)))
        self.restarted += int(stuck.sum())  # over all processes

    def bind_move(self, compiled: bool):
        """One leapfrog step of all chains; ``compiled``: the step and the traced density as one graph."""
        if not compiled:
            return self.chains.bind(leapfrog)
        point = self.chains.point
        example = (Point(point.z, torch.ones_like(point.z), point.logp, point.grad),
                   torch.full_like(point.logp, 1e-3), self.metric.inverse_mass)
        return self.chains.bind(leapfrog, example)

    def postfix(self) -> dict:
        return {"step": f"{float(self.step_size[0]):.3g}", "steps": self.num_steps}
