"""``nuts``: many NUTS chains as one (C, D) tensor program over the model's flat log density, with Stan's
windowed warmup. Pyro's own kernel stays available as ``pyro-nuts``."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._errors import ZooError
from ._base import FitResult, check_positive, register_backend
from ._random import ChainRandom
from .adaptation import DualAveraging, MassEstimate, warmup_windows
from .loop import run_steps
from .sites import run_trace
from .traced import MODES, value_and_grad_fn
from .trajectory import SLOTS, Metric, Point, leapfrog, nuts_transition

INIT_TRIES = 100  # jittered starts tried per chain before falling back to the model's own start
DENSE_MAX_DIM = 2000  # a dense mass matrix per chain is D x D
# random-counter bases of the warmup's helpers: far above any transition's counters (t * SLOTS + slot)
_INIT_COUNTER, _STEP_SEARCH_COUNTER = 2**50, 2**51


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
    density : {"traced", "compiled", "eager"}
        How the log density runs: its tensor operations traced once and replayed without Pyro
        (``"traced"``), that trace fused by ``torch.compile`` (``"compiled"``: a start of seconds to a
        minute, then the fastest), or the Pyro model on every call (``"eager"``). A model whose trace does
        not reproduce it (control flow on the latents' values) runs eagerly; ``post.info["density"]`` says
        which ran.
    """

    name: ClassVar[str] = "nuts"
    num_warmup: int = 500
    num_chains: int = 4
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    pooled_mass: bool = True
    init_spread: float = 1.0
    density: str = "traced"

    def check(self) -> None:
        check_positive(f"{self.name}: num_warmup", self.num_warmup + 1)
        check_positive(f"{self.name}: num_chains", self.num_chains)
        check_positive(f"{self.name}: max_tree_depth", self.max_tree_depth)
        if self.max_tree_depth > SLOTS - 2:
            raise ZooError(f"{self.name}: max_tree_depth must be at most {SLOTS - 2}, got {self.max_tree_depth}")
        if not 0 < self.target_accept < 1:
            raise ZooError(f"{self.name}: target_accept must be in (0, 1), got {self.target_accept}")
        if self.density not in MODES:
            raise ZooError(f"{self.name}: density must be one of {MODES}, got {self.density!r}")
        if not (isinstance(self.init_spread, (int, float)) and 0 <= self.init_spread < math.inf):
            raise ZooError(f"{self.name}: init_spread must be a number >= 0, got {self.init_spread!r}")

    def fit(self, problem) -> FitResult:
        self.check()
        latents, log_density, theta0 = problem.flat()
        if self.dense_mass and latents.dim > DENSE_MAX_DIM:
            raise ZooError(f"{self.name}: dense_mass=True needs a {latents.dim} x {latents.dim} matrix per chain; "
                           f"it is kept to {DENSE_MAX_DIM} coordinates: use dense_mass=False")
        # one seed from the caller's stream; chain c's numbers depend on it and on c alone
        random = ChainRandom(int(torch.randint(2**62, ())), self.num_chains, theta0.device)

        eager, _ = value_and_grad_fn(log_density, theta0, "eager")
        batch = theta0.expand(self.num_chains, -1)
        fast, mode = value_and_grad_fn(log_density, batch, self.density)
        density = _per_chain_failures(fast, eager)
        point = _initial_points(problem, density, theta0, self.num_chains, self.init_spread, random)
        sampler = _Sampler(self, problem.num_samples, point, density, random)
        start = time.perf_counter()
        status = run_steps(self.num_warmup + problem.num_samples, sampler.step, self.name, problem.progress,
                           postfix=sampler.postfix)
        seconds = time.perf_counter() - start
        if not sampler.draws:
            raise ZooError(f"{self.name}: interrupted before the first draw after warmup; nothing to keep")
        if status.interrupted:
            status.interrupted = (f"{self.name}: interrupted after {len(sampler.draws)} of {problem.num_samples} "
                                  "draws per chain; kept them")
        theta = torch.stack(sampler.draws, 1)  # (chain, draw, D)
        samples = {n: v.detach() for n, v in latents.constrain(theta).items()}
        stats = {k: torch.stack(v, 1) for k, v in sampler.stats.items()}
        status.warnings += sampler.collapsed_step_sizes()
        return FitResult(samples, status=status, sample_stats=stats,
                         info={"chains_batched": self.num_chains, "dense_mass": self.dense_mass, "density": mode,
                               "sampling_seconds": seconds,  # warmup and draws, after the setup
                               "leapfrog_steps": sampler.leapfrogs.tolist()})  # per chain, warmup included


class _Sampler:
    """The state between iterations: where each chain is, its step size and metric, the warmup's estimates."""

    def __init__(self, config: NUTS, num_samples: int, point: Point, density, random: ChainRandom):
        self.config, self.density, self.random, self.point = config, density, random, point
        chains, dim = point.z.shape
        self.metric = Metric(torch.eye(dim, dtype=point.z.dtype, device=point.z.device).expand(chains, dim, dim)
                             if config.dense_mass else torch.ones_like(point.z))
        step = _search_step_size(point, torch.ones_like(point.logp), self.metric, density, random, 0)
        self.adapt = DualAveraging(config.target_accept, step.log())
        self.step_size = step
        self.windows = warmup_windows(config.num_warmup)
        self.window = 0
        self.mass = MassEstimate(chains, dim, config.dense_mass, config.pooled_mass, point.z)
        self.draws: list[torch.Tensor] = []
        self.stats: dict[str, list[torch.Tensor]] = {k: [] for k in (
            "diverging", "tree_depth", "n_steps", "energy", "step_size", "acceptance_rate", "lp")}
        self.depth = 0
        self.leapfrogs = torch.zeros(chains, dtype=torch.long, device=point.z.device)

    def step(self, t: int) -> None:
        c = self.config
        moved = nuts_transition(self.point, self.step_size, self.metric, self.density, self.random, t,
                                c.max_tree_depth)
        self.point = moved.point
        self.depth = int(moved.tree_depth.max())
        self.leapfrogs += moved.n_steps.long()
        if t < c.num_warmup:
            self._adapt(t, moved.acceptance_rate)
            return None
        self.draws.append(moved.point.z.detach())
        for name, value in (("diverging", moved.diverging), ("tree_depth", moved.tree_depth),
                            ("n_steps", moved.n_steps), ("energy", moved.energy), ("step_size", self.step_size),
                            ("acceptance_rate", moved.acceptance_rate), ("lp", moved.point.logp)):
            self.stats[name].append(value.detach())
        return None

    def _adapt(self, t: int, acceptance: torch.Tensor) -> None:
        c = self.config
        self.adapt.update(acceptance)
        self.step_size = self.adapt.step_size
        if self.window < len(self.windows):
            start, end = self.windows[self.window]
            if start <= t < end:
                self.mass.add(self.point.z.detach())
            if t + 1 == end:  # Stan: a new metric, a new step-size search, dual averaging restarted
                self.metric = Metric(self.mass.inverse_mass())
                self.mass = MassEstimate(*self.point.z.shape, c.dense_mass, c.pooled_mass, self.point.z)
                self.step_size = _search_step_size(self.point, self.step_size, self.metric, self.density,
                                                   self.random, t + 1)
                self.adapt.restart(self.step_size)
                self.window += 1
        if t + 1 == c.num_warmup:
            self.step_size = self.adapt.final_step_size

    def postfix(self) -> dict:
        return {"step": f"{float(self.step_size.mean()):.3g}", "depth": self.depth}

    def collapsed_step_sizes(self) -> list[str]:
        from .diagnostics import STEP_SIZE_MIN

        low = (self.step_size < STEP_SIZE_MIN).nonzero().flatten().tolist()
        if not low or not self.draws:
            return []
        listed = ", ".join(f"{c} ({float(self.step_size[c]):.2g})" for c in low[:5])
        return [f"{self.config.name}: the step size of chain{'s' * (len(low) > 1)} {listed} collapsed during warmup "
                f"(below {STEP_SIZE_MIN}); their draws are kept but barely move: standardise the data or "
                "reparameterise"]


def _per_chain_failures(batched, eager):
    """The batched log density, where one chain's trajectory gone out of the model's support costs that
    chain a -inf (a divergence), not the batch an exception: an invalid parameter gives a nan (validation
    is off), and an error the batch still raises (a Cholesky of a matrix no longer positive definite) is
    retried chain by chain, eagerly."""

    def one(row):
        try:
            return eager(row.unsqueeze(0))
        except (ValueError, RuntimeError):
            return row.new_full((1,), -torch.inf), torch.zeros_like(row).unsqueeze(0)

    def density(z):
        try:
            return batched(z)
        except (ValueError, RuntimeError):
            rows = [one(row) for row in z]
            return torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])

    return density


def _initial_points(problem, density, theta0: torch.Tensor, chains: int, spread: float,
                    random: ChainRandom) -> Point:
    """Each chain's start: the model's initial point jittered, redrawn while the density is not finite."""
    z = theta0.expand(chains, -1).clone()
    logp, grad = density(z)
    ok = torch.isfinite(logp) & torch.isfinite(grad).all(-1)
    if not bool(ok.any()):
        raise ZooError(_undefined_at_start(problem, theta0))
    if spread > 0:
        pending = torch.ones(chains, dtype=torch.bool, device=z.device)
        for attempt in range(INIT_TRIES):
            u = random.uniform(_INIT_COUNTER + attempt, z.shape[1], z.dtype)
            trial = torch.where(pending.unsqueeze(-1), theta0 + spread * (2 * u - 1), z)
            trial_logp, trial_grad = density(trial)
            good = pending & torch.isfinite(trial_logp) & torch.isfinite(trial_grad).all(-1)
            z = torch.where(good.unsqueeze(-1), trial, z)
            logp, grad = torch.where(good, trial_logp, logp), torch.where(good.unsqueeze(-1), trial_grad, grad)
            pending = pending & ~good
            if not bool(pending.any()):
                break
    return Point(z, torch.zeros_like(z), logp, grad)


def _undefined_at_start(problem, theta0: torch.Tensor) -> str:
    """Which sites have a non-finite log density at the model's initial point."""
    latents, _, _ = problem.flat()
    values = latents.constrain(theta0)
    trace = run_trace(problem.model, problem.args, lambda site: values.get(site["name"]))
    bad = []
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not bool(torch.isfinite(site["fn"].log_prob(site["value"]).sum())):
            bad.append(name)
    where = f"at sites {bad}" if bad else "(its gradient, or a pyro.factor term)"
    return (f"nuts: the model's log density is not finite at its initial point {where}; give an init_loc_fn "
            "or priors whose support contains the data")


def _search_step_size(point: Point, step: torch.Tensor, metric: Metric, density, random: ChainRandom,
                      t: int) -> torch.Tensor:
    """Stan's heuristic start for dual averaging: double or halve each chain's step size until the
    acceptance of one leapfrog step crosses 0.8."""
    target = math.log(0.8)
    direction = None
    going = torch.ones_like(point.logp, dtype=torch.bool)
    for attempt in range(60):
        normal = random.normal(_STEP_SEARCH_COUNTER + t * SLOTS + attempt, point.z.shape[1], point.z.dtype)
        r = metric.momentum(normal)
        start = Point(point.z, r, point.logp, point.grad)
        new = leapfrog(start, step, metric, density)
        delta = (-point.logp + metric.kinetic(r)) - (-new.logp + metric.kinetic(new.r))
        delta = torch.nan_to_num(delta, nan=-torch.inf)
        if direction is None:
            direction = torch.where(delta > target, 2.0, 0.5).to(step.dtype)
        going = going & torch.where(direction > 1, delta > target, delta < target)
        if not bool(going.any()):
            break
        step = torch.where(going, (step * direction).clamp(1e-10, 1e7), step)
    return step
