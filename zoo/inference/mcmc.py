"""``pyro-nuts``: NUTS through Pyro's own kernel, one chain at a time (or one per forked process), driven
one step at a time so every draw and stat is kept; the cross-check of the batched ``nuts``."""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from dataclasses import dataclass, fields
from queue import Empty
from typing import ClassVar

import pyro.infer.mcmc as pyro_mcmc
import torch
from pyro.ops.integrator import register_exception_handler
from pyro.poutine.messenger import Messenger

from .._errors import ZooError
from ._base import FitResult, check_positive, register_backend
from .loop import Status, invalid_parameters, run_steps

POLL_S = 1.0  # how often the parent checks that chains it waits on are alive


# Pyro then treats that point as one of infinite energy: a divergence, so the chain keeps its finite draws
register_exception_handler("zoo_invalid_parameters", invalid_parameters)


@dataclass(frozen=True)
class DrawStats:
    """What the sampler did to make one draw (ArviZ's sample_stats names)."""

    diverging: bool
    tree_depth: int
    step_size: float
    acceptance_rate: float
    lp: float  # log density at the draw, up to a constant

    @staticmethod
    def stacked(chains: list[list[DrawStats]]) -> dict[str, torch.Tensor]:
        """Each statistic as a (chain, draw) tensor."""
        return {f.name: torch.tensor([[getattr(s, f.name) for s in chain] for chain in chains])
                for f in fields(DrawStats)}


class _TreeDepth(Messenger):
    """Counts the tree doublings of one NUTS iteration (Pyro samples a direction per doubling)."""

    def __init__(self):
        super().__init__()
        self.depth = 0

    def _pyro_sample(self, msg):
        if msg["name"].startswith("direction_t="):
            self.depth += 1


@register_backend
@dataclass
class PyroNUTS:
    """Pyro's No-U-Turn sampler. ``num_samples`` (given to ``fit``) is the number of draws per chain.

    Parameters
    ----------
    num_warmup : int
        Adaptation steps (step size and diagonal mass matrix) per chain, discarded.
    num_chains : int
        Chains per fit.
    parallel : bool, optional
        Run chains in forked processes, one core each. Default: when the machine has more cores
        than chains (Pyro's rule too); otherwise, or where fork is unavailable, one after another.
    target_accept, max_tree_depth : step-size adaptation target and the doubling limit.
    jit : bool
        Trace the log density with TorchScript (``torch.jit.trace``): about half the time per gradient on a
        network, at the cost of a slow start; the model's control flow is frozen at the first call, so only
        for models whose computation does not branch on the latents' values. TorchScript is deprecated.
    """

    name: ClassVar[str] = "pyro-nuts"
    kind: ClassVar[str] = "nuts"  # what a model card's backends and refusals call it
    num_warmup: int = 500
    num_chains: int = 2
    target_accept: float = 0.8
    max_tree_depth: int = 10
    jit: bool = False
    parallel: bool | None = None

    def fit(self, problem) -> FitResult:
        check_positive(f"{self.name}: num_warmup", self.num_warmup + 1)
        check_positive(f"{self.name}: num_chains", self.num_chains)
        check_positive(f"{self.name}: max_tree_depth", self.max_tree_depth)
        if not 0 < self.target_accept < 1:
            raise ZooError(f"pyro-nuts: target_accept must be in (0, 1), got {self.target_accept}")
        latents, _, theta0 = problem.flat()  # built before forking: every chain shares it
        device = theta0.device
        parallel = (os.cpu_count() or 1) > self.num_chains if self.parallel is None else self.parallel
        # forked children cannot use a CUDA context made by their parent
        parallel = (parallel and self.num_chains > 1 and "fork" in mp.get_all_start_methods()
                    and device.type == "cpu")
        info = {"cores": os.cpu_count(), "parallel_chains": parallel}
        # one seed per chain from the caller's stream: the draws do not depend on whether chains fork
        seeds = torch.randint(2**31 - 1, (self.num_chains,)).tolist()
        results = (self._run_parallel(problem, seeds) if parallel else self._run_sequential(problem, seeds))
        status = Status(num_steps=self.num_chains * (self.num_warmup + problem.num_samples),
                        steps_done=sum(len(r[1]) for r in results))
        complete = [r for r in results if not r[2]]
        if len(complete) < self.num_chains:
            done = ", ".join(str(len(r[1])) for r in results)
            status.interrupted = f"pyro-nuts: interrupted with draws per chain {done}; kept the finished chains"
        kept = complete or [max(results, key=lambda r: len(r[1]))]
        if not len(kept[0][1]):
            raise ZooError("pyro-nuts: interrupted before the first draw after warmup; nothing to keep")
        theta = torch.stack([torch.as_tensor(r[0], device=device) for r in kept])  # (chain, draw, D)
        samples = {n: v.detach() for n, v in latents.constrain(theta).items()}
        return FitResult(samples, status=status, sample_stats=DrawStats.stacked([r[1] for r in kept]), info=info)

    def _run_sequential(self, problem, seeds):
        results = []
        devices = [problem.flat()[2].device] if problem.flat()[2].is_cuda else []
        for chain in range(self.num_chains):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seeds[chain])
                results.append(self._run_chain(problem, chain, problem.progress))
            if results[-1][2]:  # interrupted: run no further chain
                break
        return results

    def _run_parallel(self, problem, seeds):
        ctx = mp.get_context("fork")  # children inherit the model: nothing needs pickling
        queue = ctx.Queue()
        workers = [ctx.Process(target=_chain_worker, daemon=True,
                               args=(self, problem, chain, seeds[chain], queue))
                   for chain in range(self.num_chains)]
        for w in workers:
            w.start()
        try:
            results = _collect(queue, workers)
        except ZooError:  # one chain failed: the others' work is not wanted
            for w in workers:
                w.terminate()
            raise
        finally:
            for w in workers:
                w.join()
        return [results[c] for c in range(self.num_chains)]

    def _run_chain(self, problem, chain, progress):
        """One chain on the flat log density: draws of the unconstrained vector (draws, D), the per-draw
        statistics, and whether it was interrupted."""
        _, density, theta0 = problem.flat()
        if self.jit:  # TorchScript is deprecated, but still halves a gradient here (benchmarks/perf.py)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                density = torch.jit.trace(density.__call__, theta0.clone(), check_trace=False)
        kernel = pyro_mcmc.NUTS(potential_fn=lambda z: -density(z["theta"]), target_accept_prob=self.target_accept,
                                max_tree_depth=self.max_tree_depth)
        kernel.initial_params = {"theta": theta0}
        kernel.setup(self.num_warmup)
        state = {"z": kernel.initial_params, "depth": 0}
        draws, stats = [], []

        def step(t):
            divergences = len(kernel._divergences)
            mean_accept = kernel._mean_accept_prob
            with _TreeDepth() as depth:
                state["z"] = kernel.sample(state["z"])
            state["depth"] = depth.depth
            if t < self.num_warmup:
                return None
            n = t + 1 - self.num_warmup
            _, potential, _ = kernel._fetch_from_cache()
            stats.append(DrawStats(
                diverging=len(kernel._divergences) > divergences,
                tree_depth=depth.depth,
                step_size=float(kernel.step_size),
                acceptance_rate=n * kernel._mean_accept_prob - (n - 1) * mean_accept,
                lp=-float(potential) if potential is not None else float("nan"),
            ))
            draws.append(state["z"]["theta"].detach())
            return None

        try:
            status = run_steps(self.num_warmup + problem.num_samples, step, f"pyro-nuts chain {chain}", progress,
                               postfix=lambda: {"step": f"{kernel.step_size:.3g}", "depth": state["depth"]})
        finally:
            kernel.cleanup()
        return _stacked(draws, theta0), stats, status.interrupted is not None


def _stacked(draws: list, theta0: torch.Tensor) -> torch.Tensor:
    """The chain's draws of the flat vector, (draws, D)."""
    return torch.stack(draws) if draws else theta0.new_zeros((0, theta0.numel()))


def _collect(queue, workers) -> dict:
    """Each chain's result from ``queue``; a chain whose process died without reporting is an error, not a hang."""
    results = {}
    while len(results) < len(workers):
        try:
            chain, result = queue.get(timeout=POLL_S)
        except KeyboardInterrupt:
            continue  # the chains see Ctrl-C too, and report the draws they have
        except Empty:
            dead = [c for c, w in enumerate(workers) if c not in results and not w.is_alive()]
            if dead and queue.empty():  # a child that reported and exited has its result in the queue
                code = workers[dead[0]].exitcode
                raise ZooError(f"pyro-nuts: chain {dead[0]} died in its process (exit code {code}) without reporting, "
                               "e.g. killed for memory; run with parallel=False to see its error") from None
            continue
        if isinstance(result, str):
            raise ZooError(f"pyro-nuts: chain {chain} failed in its process: {result}")
        results[chain] = result
    return results


def _chain_worker(backend, problem, chain, seed, queue):
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    try:
        draws, stats, interrupted = backend._run_chain(problem, chain, progress=False)
        # numpy crosses the process boundary by value (torch would share memory the child takes away)
        queue.put((chain, (draws.numpy(), stats, interrupted)))
    except Exception as err:  # reported to the parent, which raises it
        queue.put((chain, f"{type(err).__name__}: {err}"))
