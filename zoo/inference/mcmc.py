"""NUTS (and HMC) through Pyro's kernels, driven one step at a time so every draw and stat is kept."""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import ClassVar

import pyro
import pyro.infer.mcmc as pyro_mcmc
import torch
from pyro.poutine.messenger import Messenger

from .._errors import ZooError
from ._base import FitResult, check_positive, register_backend
from ._progress import progress_bar


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
class NUTS:
    """The No-U-Turn sampler. ``num_samples`` (given to ``fit``) is the number of draws per chain.

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
        Compile the potential energy with the PyTorch JIT (faster gradients, slow start).
    """

    name: ClassVar[str] = "nuts"
    num_warmup: int = 500
    num_chains: int = 2
    target_accept: float = 0.8
    max_tree_depth: int = 10
    jit: bool = False
    parallel: bool | None = None

    def fit(self, zm, args, sites, *, num_samples, progress) -> FitResult:
        check_positive("nuts: num_warmup", self.num_warmup + 1)
        check_positive("nuts: num_chains", self.num_chains)
        check_positive("nuts: max_tree_depth", self.max_tree_depth)
        if not 0 < self.target_accept < 1:
            raise ZooError(f"nuts: target_accept must be in (0, 1), got {self.target_accept}")
        parallel = (os.cpu_count() or 1) > self.num_chains if self.parallel is None else self.parallel
        # forked children cannot use a CUDA context made by their parent
        parallel = (parallel and self.num_chains > 1 and "fork" in mp.get_all_start_methods()
                    and args[0].device.type == "cpu")
        info = {"cores": os.cpu_count(), "parallel_chains": parallel}
        results = (self._run_parallel(zm, args, sites, num_samples) if parallel
                   else self._run_sequential(zm, args, sites, num_samples, progress))
        complete = [r for r in results if not r[2]]
        if len(complete) < self.num_chains:
            done = ", ".join(str(len(r[1])) for r in results)
            info["interrupted"] = f"nuts: interrupted with draws per chain {done}; kept the finished chains"
        kept = complete or [max(results, key=lambda r: len(r[1]))]
        if not kept[0][1]:
            raise ZooError("nuts: interrupted before the first draw after warmup; nothing to keep")
        chains, stats = [r[0] for r in kept], [r[1] for r in kept]
        device = args[0].device
        samples = {n: torch.stack([torch.as_tensor(c[n], device=device) for c in chains]) for n in sites.latent}
        sample_stats = {k: torch.tensor([[s[k] for s in c] for c in stats]) for k in stats[0][0]}
        return FitResult(samples, sample_stats=sample_stats, info=info)

    def _run_sequential(self, zm, args, sites, num_samples, progress):
        results = []
        for chain in range(self.num_chains):
            results.append(self._run_chain(zm, args, sites, num_samples, chain, progress))
            if results[-1][2]:  # interrupted: run no further chain
                break
        return results

    def _run_parallel(self, zm, args, sites, num_samples):
        ctx = mp.get_context("fork")  # children inherit the model: nothing needs pickling
        queue = ctx.Queue()
        seeds = torch.randint(2**31 - 1, (self.num_chains,)).tolist()
        workers = [ctx.Process(target=_chain_worker, daemon=True,
                               args=(self, zm, args, sites, num_samples, chain, seeds[chain], queue))
                   for chain in range(self.num_chains)]
        for w in workers:
            w.start()
        results = {}
        while len(results) < self.num_chains:
            try:
                chain, result = queue.get()
            except KeyboardInterrupt:
                continue  # the chains see Ctrl-C too, and report the draws they have
            if isinstance(result, str):
                raise ZooError(f"nuts: chain {chain} failed in its process: {result}")
            results[chain] = result
        for w in workers:
            w.join()
        return [results[c] for c in range(self.num_chains)]

    def _run_chain(self, zm, args, sites, num_samples, chain, progress):
        kernel = pyro_mcmc.NUTS(zm.model, target_accept_prob=self.target_accept,
                                max_tree_depth=self.max_tree_depth, jit_compile=self.jit,
                                ignore_jit_warnings=True, init_strategy=zm.init_loc_fn,
                                max_plate_nesting=zm.max_plate_nesting)
        kernel.setup(self.num_warmup, *args)
        z = kernel.initial_params
        draws, stats = [], []
        total = self.num_warmup + num_samples
        bar = progress_bar(total, f"nuts chain {chain}", progress)
        try:
            for t in range(total):
                divergences = len(kernel._divergences)
                mean_accept = kernel._mean_accept_prob
                with _TreeDepth() as depth:
                    z = kernel.sample(z)
                bar.update()
                if t < self.num_warmup:
                    continue
                n = t + 1 - self.num_warmup
                _, potential, _ = kernel._fetch_from_cache()
                stats.append({
                    "diverging": len(kernel._divergences) > divergences,
                    "tree_depth": depth.depth,
                    "step_size": float(kernel.step_size),
                    "acceptance_rate": n * kernel._mean_accept_prob - (n - 1) * mean_accept,
                    "lp": -float(potential) if potential is not None else float("nan"),
                })
                draws.append({name: kernel.transforms[name].inv(z[name]).detach() if name in
                              kernel.transforms else z[name].detach() for name in sites.latent})
                if n % 50 == 0:
                    bar.set_postfix(step=f"{kernel.step_size:.3g}", depth=depth.depth)
        except KeyboardInterrupt:
            return _stacked(draws), stats, True
        finally:
            bar.close()
            kernel.cleanup()
        return _stacked(draws), stats, False


def _stacked(draws: list[dict]) -> dict:
    """Per-site tensors shaped (draws, ...)."""
    return {n: torch.stack([d[n] for d in draws]) for n in draws[0]} if draws else {}


def _chain_worker(backend, zm, args, sites, num_samples, chain, seed, queue):
    torch.set_num_threads(1)
    pyro.set_rng_seed(seed)
    try:
        draws, stats, interrupted = backend._run_chain(zm, args, sites, num_samples, chain, progress=False)
        # numpy crosses the process boundary by value (torch would share memory the child takes away)
        queue.put((chain, ({n: v.numpy() for n, v in draws.items()}, stats, interrupted)))
    except Exception as err:  # reported to the parent, which raises it
        queue.put((chain, f"{type(err).__name__}: {err}"))
