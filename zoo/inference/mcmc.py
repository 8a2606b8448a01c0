"""NUTS (and HMC) through Pyro's kernels, driven one step at a time so every draw and stat is kept."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

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
        Chains, run one after another (Pyro keeps a core free, so on a 2-core machine parallel
        chains would run sequentially anyway).
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

    def fit(self, zm, args, sites, *, num_samples, progress) -> FitResult:
        check_positive("nuts: num_warmup", self.num_warmup + 1)
        check_positive("nuts: num_chains", self.num_chains)
        check_positive("nuts: max_tree_depth", self.max_tree_depth)
        if not 0 < self.target_accept < 1:
            raise ZooError(f"nuts: target_accept must be in (0, 1), got {self.target_accept}")
        chains, stats, info = [], [], {"cores": os.cpu_count()}
        for chain in range(self.num_chains):
            draws, chain_stats, interrupted = self._run_chain(zm, args, sites, num_samples, chain, progress)
            if interrupted:
                info["interrupted"] = f"nuts: interrupted in chain {chain} after {len(draws)} draws"
                if not chains:
                    chains, stats = [draws], [chain_stats]
                break
            chains.append(draws)
            stats.append(chain_stats)
        if not chains or not chains[0]:
            raise ZooError("nuts: interrupted before the first draw after warmup; nothing to keep")
        samples = {n: torch.stack([torch.stack([d[n] for d in c]) for c in chains]) for n in sites.latent}
        sample_stats = {k: torch.tensor([[s[k] for s in c] for c in stats]) for k in stats[0][0]}
        return FitResult(samples, sample_stats=sample_stats, info=info)

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
            return draws, stats, True
        finally:
            bar.close()
            kernel.cleanup()
        return draws, stats, False
