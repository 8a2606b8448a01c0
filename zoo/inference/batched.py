"""What the batched samplers (``nuts``, ``chees``) share: C chains started as one (C, D) batch over the
model's flat log density, a density that fails per chain rather than per batch, a step run eagerly or
compiled, Stan's windowed mass-matrix warmup and step-size search, and the draws handed back."""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._errors import ZooError
from . import distributed
from ._base import FitResult, check_positive
from ._random import ChainRandom
from .adaptation import MassEstimate, warmup_windows
from .distributed import World
from .flat import FlatLatents
from .loop import run_steps
from .sites import run_trace
from .traced import MODES, compile_checked, step_threads, value_and_grad_fn
from .trajectory import SLOTS, Metric, Point, leapfrog

INIT_TRIES = 100  # jittered starts tried per chain before falling back to the model's own start
DENSE_MAX_DIM = 2000  # a dense mass matrix per chain is D x D
MOMENTA_BLOCK = 64  # transitions whose momenta are drawn in one call: a small draw costs its call, not its numbers
# random-counter bases of the warmup's helpers: far above any transition's counters (t * SLOTS + slot)
_INIT_COUNTER, _STEP_SEARCH_COUNTER = 2**50, 2**51
# density="auto": at iterations 25, 50, 100, 200... the run's remaining leapfrog steps are projected from the
# rate since the last such check, and beyond AUTO_COMPILE_STEPS the step is compiled. A small model's batched
# step costs some 4 to 8 ms traced and 0.15 to 0.2 ms compiled on 2 CPU cores, and compiling takes up to a
# minute: it pays from some 15,000 steps on.
AUTO_FIRST_CHECK = 25
AUTO_COMPILE_STEPS = 20_000
DENSITIES = (*MODES, "auto")


@dataclass
class Chains:
    """The chains' start: the flat map, the density (traced where it can be; ``density`` falls back to
    eager chain by chain where the batch raises), how it runs, where each chain starts, its random stream."""

    latents: FlatLatents
    density: Callable
    traced: Callable
    mode: str
    point: Point
    random: ChainRandom
    world: World | None = None  # under torchrun: this process runs its share of the chains

    def bind(self, step: Callable, example: tuple | None = None,
             compared: Callable = lambda out: out) -> tuple[Callable, str]:
        """``step(*args, density=...)`` with the density bound, and how the density runs in it. Given an
        ``example``, step and traced density are compiled as one graph where that compiles and agrees with
        the uncompiled step on it (``compared`` picks the outputs to check); a compiled call that raises
        (one chain gone out of the support) is redone uncompiled."""

        def eager(*args):
            return step(*args, density=self.density)

        if example is None or self.mode != "traced":
            return eager, self.mode
        compiled = compile_checked(lambda *args: step(*args, density=self.traced), example, compared,
                                   step_threads(self.traced))
        if compiled is None:
            return eager, self.mode

        def run(*args):
            try:
                return compiled(*args)
            except (RuntimeError, ValueError):
                return eager(*args)

        return run, "compiled"


def check_chain_options(config) -> None:
    """The options every batched sampler has: num_warmup, num_chains, target_accept, density, init_spread."""
    name = config.name
    check_positive(f"{name}: num_warmup", config.num_warmup + 1)
    check_positive(f"{name}: num_chains", config.num_chains)
    if not 0 < config.target_accept < 1:
        raise ZooError(f"{name}: target_accept must be in (0, 1), got {config.target_accept}")
    if config.density not in DENSITIES:
        raise ZooError(f"{name}: density must be one of {DENSITIES}, got {config.density!r}")
    if not (isinstance(config.init_spread, (int, float)) and 0 <= config.init_spread < math.inf):
        raise ZooError(f"{name}: init_spread must be a number >= 0, got {config.init_spread!r}")


def start_chains(problem, name: str, num_chains: int, init_spread: float, density: str,
                 dense_mass: bool) -> Chains:
    latents, log_density, theta0 = problem.flat()
    if dense_mass and latents.dim > DENSE_MAX_DIM:
        raise ZooError(f"{name}: dense_mass=True needs a {latents.dim} x {latents.dim} matrix per chain; "
                       f"it is kept to {DENSE_MAX_DIM} coordinates: use dense_mass=False")
    # one seed from the caller's stream (rank 0's under torchrun); chain c's numbers depend on it and on c alone
    world, first = problem.world, 0
    seed = torch.randint(2**62, ())
    if world is not None:
        num_chains, first = distributed.split_chains(num_chains, world)
        seed = distributed.from_rank_0(seed.to(theta0.device))
    random = ChainRandom(int(seed), num_chains, theta0.device, first)
    eager, _ = value_and_grad_fn(log_density, theta0, "eager")
    batch = theta0.expand(num_chains, -1)
    fast, mode = value_and_grad_fn(log_density, batch, "eager" if density == "eager" else "traced")
    per_chain = _per_chain_failures(fast, eager)
    point = _initial_points(problem, name, per_chain, theta0, num_chains, init_spread, random)
    return Chains(latents, per_chain, fast, mode, point, random, world)


def identity_metric(point: Point, dense: bool) -> Metric:
    chains, dim = point.z.shape
    eye = torch.eye(dim, dtype=point.z.dtype, device=point.z.device)
    return Metric(eye.expand(chains, dim, dim) if dense else torch.ones_like(point.z))


class Kept:
    """Each chain's draws and per-draw stats in the order that chain made them (chains may finish their
    iterations at different times), handed back as the first n of every chain, where all have n."""

    def __init__(self, rows: int, chains: int, device=None):
        self.rows, self.values = rows, {}
        self.count = torch.zeros(chains, dtype=torch.long, device=device)
        self.index = torch.arange(chains, device=device)

    def put(self, values: dict[str, torch.Tensor], chains: torch.Tensor | None = None) -> None:
        """Append each chain's values (C, ...) to its rows; of the ``chains`` (a mask) alone if given."""
        row = self.count if chains is None else torch.where(chains, self.count, self.rows)
        for name, value in values.items():
            if name not in self.values:  # one row past the end takes the values of chains not kept
                self.values[name] = value.new_zeros(value.shape[0], self.rows + 1, *value.shape[1:])
            self.values[name][self.index, row] = value.detach()
        self.count = self.count + (1 if chains is None else chains)

    def complete(self) -> int:
        """Draws that every chain has."""
        return int(self.count.min())

    def first(self, n: int) -> dict[str, torch.Tensor]:
        return {name: value[:, :n] for name, value in self.values.items()}


class ChainRun(ABC):
    """The state of a batched run between iterations: each chain's point, the metric and its windowed
    estimate (Stan's schedule), the draws and per-draw stats kept after warmup. Subclasses make the move."""

    name: str
    stat_names: tuple[str, ...]

    @abstractmethod
    def step(self, t: int) -> None:
        """Iteration t of every chain: move, adapt during warmup, keep the draw after."""

    @abstractmethod
    def postfix(self) -> dict:
        """What the progress bar shows of the run's state."""

    @abstractmethod
    def bind_move(self, compiled: bool) -> tuple[Callable, str]:
        """The move's kernel (``self.move``) with the density bound, and how the density runs in it;
        ``compiled``: kernel and traced density as one compiled graph, where that compiles."""

    def __init__(self, chains: Chains, num_warmup: int, num_samples: int, dense_mass: bool, pooled_mass: bool,
                 density: str):
        """``density``: the sampler's option; "auto" compiles the move once the rest of the run is projected to
        take enough leapfrog steps to pay for it (checked at iterations 25, 50, 100...)."""
        self.chains, self.point, self.random, self.density = chains, chains.point, chains.random, chains.density
        self.num_warmup, self.num_samples = num_warmup, num_samples
        self.dense_mass, self.pooled_mass = dense_mass, pooled_mass
        self.metric = identity_metric(self.point, dense_mass)
        # momenta are drawn for a block of iterations at once: a small draw costs its call, not its numbers
        self.block = max(1, min(MOMENTA_BLOCK, 2**22 // self.point.z.numel()))  # at most 32 MB of normals
        self.move, self.mode = self.bind_move(density == "compiled")
        self.auto, self.compiled_from, self.checked = density == "auto", None, (0, 0)
        self.windows, self.window = warmup_windows(num_warmup), 0
        self.mass = MassEstimate(*self.point.z.shape, dense_mass, pooled_mass, self.point.z, self.pool)
        self.kept = Kept(num_samples, self.point.z.shape[0], self.point.z.device)
        self.leapfrogs = torch.zeros(self.point.z.shape[0], dtype=torch.long, device=self.point.z.device)
        self.step_size = self.search_step_size(torch.ones_like(self.point.logp), 0)
        self.normals, self.normals_from = None, None

    def pool(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Per-chain tensors of every process's chains (this process's alone in one process)."""
        world = self.chains.world
        if world is None:
            return list(tensors)
        return list(distributed.gather_chains(dict(enumerate(tensors)), world).values())

    def normals_block(self, first: torch.Tensor) -> torch.Tensor:
        """Each chain's standard normals for its iterations ``first .. first + block - 1`` (C, block, D), at
        their counters: each the number its counter gives alone, so a chain's stream is unchanged."""
        counters = (first.unsqueeze(-1) + torch.arange(self.block, device=first.device)) * SLOTS
        return self.random.normal_per_chain(counters, self.point.z.shape[1], self.point.z.dtype)

    def momentum(self, t: int) -> torch.Tensor:
        """Iteration t's momenta under the current metric (every chain at iteration t)."""
        first = t - t % self.block
        if self.normals_from != first:
            self.normals = self.normals_block(torch.full_like(self.leapfrogs, first))
            self.normals_from = first
        return self.metric.momentum(self.normals[:, t - first])

    def keep(self, stats: dict[str, torch.Tensor], chains: torch.Tensor | None = None) -> None:
        """The chains' points and stats as their next draw; of the ``chains`` (a mask) alone if given."""
        self.kept.put({"z": self.point.z, **{name: stats[name] for name in self.stat_names}}, chains)

    def new_metric(self, t: int) -> bool:
        """Add this warmup iteration's points to the window's estimate; at a window's end, the metric
        from it (and True: the caller then searches a step size again and restarts its adaptation)."""
        if self.window >= len(self.windows):
            return False
        start, end = self.windows[self.window]
        if start <= t < end:
            self.mass.add(self.point.z.detach())
        if t + 1 != end:
            return False
        self.switch_metric()
        return True

    def switch_metric(self) -> None:
        """The metric from the window's estimate, and the next window's estimate begun."""
        self.metric = Metric(self.mass.inverse_mass())
        self.mass = MassEstimate(*self.point.z.shape, self.dense_mass, self.pooled_mass, self.point.z, self.pool)
        self.window += 1

    def search_step_size(self, step: torch.Tensor, t: int) -> torch.Tensor:
        """Stan's heuristic start for dual averaging: double or halve each chain's step size until the
        acceptance of one leapfrog step crosses 0.8."""
        point, metric, target = self.point, self.metric, math.log(0.8)
        direction = None
        going = torch.ones_like(point.logp, dtype=torch.bool)
        for attempt in range(60):
            normal = self.random.normal(_STEP_SEARCH_COUNTER + t * SLOTS + attempt, point.z.shape[1], point.z.dtype)
            r = metric.momentum(normal)
            new = leapfrog(Point(point.z, r, point.logp, point.grad), step, metric.inverse_mass, self.density)
            delta = (-point.logp + metric.kinetic(r)) - (-new.logp + metric.kinetic(new.r))
            delta = torch.nan_to_num(delta, nan=-torch.inf)
            if direction is None:
                direction = torch.where(delta > target, 2.0, 0.5).to(step.dtype)
            going = going & torch.where(direction > 1, delta > target, delta < target)
            if not bool(going.any()):
                break
            step = torch.where(going, (step * direction).clamp(1e-10, 1e7), step)
        return step

    def _compile_if_it_pays(self, t: int) -> None:
        if not (self.auto and self.mode == "traced" and t == max(AUTO_FIRST_CHECK, 2 * self.checked[0])):
            return
        (done,) = self.pool(self.leapfrogs)  # every process's chains: all decide alike
        done = int(done.max())
        since, steps_then = self.checked
        self.checked = (t, done)
        if (done - steps_then) / (t - since) * (self.num_warmup + self.num_samples - t) > AUTO_COMPILE_STEPS:
            self.move, self.mode = self.bind_move(compiled=True)
            self.compiled_from = t if self.mode == "compiled" else None

    def _step(self, t: int) -> None:
        self._compile_if_it_pays(t)
        self.step(t)

    def run(self, problem) -> FitResult:
        start = time.perf_counter()
        status = run_steps(self.num_warmup + self.num_samples, self._step, self.name, problem.progress,
                           postfix=self.postfix)
        seconds = time.perf_counter() - start
        drawn = self.kept.complete()
        if not drawn:
            raise ZooError(f"{self.name}: interrupted before the first draw after warmup; nothing to keep")
        if status.interrupted:
            status.interrupted = (f"{self.name}: interrupted after {drawn} of {self.num_samples} "
                                  "draws per chain (as many as every chain had); kept them")
        kept = self.kept.first(drawn)  # (chain, draw, ...), every process's chains
        theta, leapfrogs, *stats = self.pool(kept["z"], self.leapfrogs, *(kept[n] for n in self.stat_names))
        samples = {n: v.detach() for n, v in self.chains.latents.constrain(theta).items()}
        stats = dict(zip(self.stat_names, stats, strict=True))
        status.warnings += self.collapsed_step_sizes()
        return FitResult(samples, status=status, sample_stats=stats,
                         info={"density": self.mode,
                               **({"compiled_from_iteration": self.compiled_from} if self.compiled_from else {}),
                               "chains_batched": self.point.z.shape[0], "dense_mass": self.dense_mass,
                               "sampling_seconds": seconds,  # warmup and draws, after the setup
                               "leapfrog_steps": leapfrogs.tolist()})  # per chain, warmup included

    def collapsed_step_sizes(self) -> list[str]:
        from .diagnostics import STEP_SIZE_MIN

        step = self.step_size.expand(self.point.z.shape[0])
        low = (step < STEP_SIZE_MIN).nonzero().flatten().tolist()
        if not low or not self.kept.complete():
            return []
        listed = ", ".join(f"{c} ({float(step[c]):.2g})" for c in low[:5])
        return [f"{self.name}: the step size of chain{'s' * (len(low) > 1)} {listed} collapsed during warmup "
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


def _initial_points(problem, name: str, density, theta0: torch.Tensor, chains: int, spread: float,
                    random: ChainRandom) -> Point:
    """Each chain's start: the model's initial point jittered, redrawn while the density is not finite."""
    z = theta0.expand(chains, -1).clone()
    logp, grad = density(z)
    ok = torch.isfinite(logp) & torch.isfinite(grad).all(-1)
    if not bool(ok.any()):
        raise ZooError(_undefined_at_start(problem, name, theta0))
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


def _undefined_at_start(problem, name: str, theta0: torch.Tensor) -> str:
    """Which sites have a non-finite log density at the model's initial point."""
    latents, _, _ = problem.flat()
    values = latents.constrain(theta0)
    trace = run_trace(problem.model, problem.args, lambda site: values.get(site["name"]))
    bad = []
    for site_name, site in trace.nodes.items():
        if site["type"] == "sample" and not bool(torch.isfinite(site["fn"].log_prob(site["value"]).sum())):
            bad.append(site_name)
    where = f"at sites {bad}" if bad else "(its gradient, or a pyro.factor term)"
    return (f"{name}: the model's log density is not finite at its initial point {where}; give an init_loc_fn "
            "or priors whose support contains the data")


