"""Stochastic variational inference: minibatches, vectorised particles, a schedule, a guarded loop."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pyro
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuide

from .._errors import ZooError
from .._noise import per_example_noise
from . import distributed, guide_start
from ._base import (
    FitResult,
    check_positive,
    draw_from_guide,
    lr_gamma,
    on_minibatch,
    register_backend,
)
from .adam import Adam
from .elbo_graph import ElboStep, trace_elbo_step
from .loop import NonFinite, invalid_parameters, run_steps
from .sites import DATA_PLATE, MinibatchIndices

ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}
JIT_ELBOS = {"trace": JitTrace_ELBO, "meanfield": JitTraceMeanField_ELBO}
ELBO_STEPS = ("auto", "pyro", "traced", "compiled")
# tracing the step (elbo_graph.py) costs about 200 of Pyro's steps and then halves each step's ELBO: shorter
# fits keep Pyro's step
TRACE_MIN_STEPS = 500
TIMED_STEPS = 20  # traced steps timed before deciding whether compiling them pays


@register_backend
@dataclass
class SVI:
    """Stochastic variational inference with the model's guide (``guide=`` picks another).

    Parameters
    ----------
    guide : str or callable, optional
        A guide name from the model's card (``"mean-field"``, ``"low-rank"``, ``"mc-dropout"`` ...)
        or a guide callable. Default: the model's default guide.
    num_steps, num_epochs : int, optional
        Length of training; ``num_epochs`` counts passes over the data. Default 2,000 steps.
    batch_size : int, optional
        Minibatch size via ``pyro.plate("data", subsample=...)``; default full batch.
    lr, lr_decay : float
        Adam learning rate, decayed exponentially to ``lr * lr_decay`` by the last step.
    optimizer : {"adam", "clipped_adam"}
    elbo : {"trace", "meanfield"}
        ``Trace_ELBO`` or ``TraceMeanField_ELBO`` (analytic KL where available).
    num_particles : int
        Monte Carlo samples per step, vectorised.
    init : {"auto", "prior", "map"}
        Where an autoguide (``mean-field``, ``low-rank``, ``full-rank``, ``delta``) starts: the model's initial
        point (the prior's median, or its ``init_loc_fn``), or the Laplace approximation at the MAP (L-BFGS and
        damped Newton steps on the full data): its mode as the location, its curvature as the scales (a
        low-rank guide takes the location only). ``"auto"``: the MAP for a guide chosen by name over the global
        latents of a model without an output layer (not a network, whose MAP overfits) of at most 1,000
        coordinates, fitted on the full data, where the search converges; else the prior. The curvature's scales
        are used where the Laplace approximation's PSIS k-hat is at most 0.7, else the guide's own small ones (a
        hierarchical model's mode can lie far from its mass).
        ``post.info["init"]`` says which ran (guide_start.py).
    jit : bool
        Compile the ELBO with the PyTorch JIT (faster steps after a slow first one; TorchScript, deprecated).
    elbo_step : {"auto", "pyro", "traced", "compiled"}
        How each step runs after the first. ``"pyro"``: Pyro's ``loss_and_grads``. ``"traced"``: the ELBO's
        loss and gradients traced once into an FX graph of tensor operations (zoo/inference/elbo_graph.py),
        used where that graph gives Pyro's loss and gradients at the same random numbers. ``"compiled"``:
        that graph fused by inductor (seconds to compile; about a tenth of the traced step on a small
        network). ``"auto"``: traced for fits of at least 500 steps, and compiled where the first traced
        steps' time says compiling pays for itself over the steps left. ``post.info["elbo_step"]`` says
        which ran. A model whose Python state changes between steps (a counter read inside it) must pass
        that state as data, or use ``"pyro"``.

    Notes
    -----
    Every step updates all parameters with one fused Adam (adam.py).
    """

    name: ClassVar[str] = "svi"
    trains_modules: ClassVar[bool] = True  # the model's networks (pyro.module) train beside the guide
    guide: str | Callable | None = None
    guide_options: dict = field(default_factory=dict)
    num_steps: int | None = None
    num_epochs: int | None = None
    batch_size: int | None = None
    lr: float = 1e-2
    lr_decay: float = 0.1
    optimizer: str = "adam"
    clip_norm: float = 10.0
    elbo: str = "trace"
    num_particles: int = 1
    jit: bool = False
    elbo_step: str = "auto"
    init: str = "auto"

    def fit(self, problem) -> FitResult:
        if self.elbo not in ELBOS:
            raise ZooError(f"svi: elbo must be one of {sorted(ELBOS)}, got {self.elbo!r}")
        if self.elbo_step not in ELBO_STEPS:
            raise ZooError(f"svi: elbo_step must be one of {list(ELBO_STEPS)}, got {self.elbo_step!r}")
        if self.jit and self.elbo_step in ("traced", "compiled"):
            raise ZooError(f"svi: jit=True runs Pyro's step under TorchScript; drop it to get elbo_step="
                           f"{self.elbo_step!r}")
        if self.optimizer not in ("adam", "clipped_adam"):
            raise ZooError(f"svi: optimizer must be 'adam' or 'clipped_adam', got {self.optimizer!r}")
        check_positive("svi: lr", self.lr, integer=False)
        check_positive("svi: num_particles", self.num_particles)
        args, sites = problem.args, problem.sites
        n = args[0].shape[0]
        batch_size = n if self.batch_size is None else min(self.batch_size, n)
        check_positive("svi: batch_size", batch_size)
        num_steps = self._num_steps(n, batch_size)
        guide = problem.make_guide(self.guide, **self.guide_options)
        world = problem.world
        if world is not None and batch_size < world.size:
            raise ZooError(f"svi: batches of {batch_size} points{' (all the data)' * (batch_size == n)} split over "
                           f"{world.size} processes leave some without a point; use a batch_size of at least "
                           f"{world.size}, or fewer processes")
        minibatch = batch_size < n or world is not None  # under torchrun each process fits its shard of a batch
        model = on_minibatch(problem.model) if minibatch else problem.model
        guide_run = on_minibatch(guide) if minibatch else guide
        elbo_options = dict(num_particles=self.num_particles, vectorize_particles=self.num_particles > 1,
                            max_plate_nesting=sites.max_plate_nesting)
        if self.jit:
            elbo = JIT_ELBOS[self.elbo](**elbo_options, ignore_jit_warnings=True)
        else:
            elbo = ELBOS[self.elbo](**elbo_options)
        if minibatch:
            if world is None:
                _check_subsampling(model, args, batch_size)
            else:  # without moving rank 0's random stream from the one a single process would draw
                with torch.random.fork_rng(devices=[]):
                    _check_subsampling(model, args, -(-batch_size // world.size))

        losses, notes = [], []
        device = args[0].device

        def permutation():  # the batches' order: rank 0's in every process
            perm = torch.randperm(n, device=device)
            return perm if world is None else distributed.from_rank_0(perm)

        order = {"perm": permutation()}
        if minibatch and isinstance(guide, AutoGuide) and not sites.local:  # after the permutation, as before
            _prototype_on_minibatch(guide, args, order["perm"][:batch_size])
        start = guide_start.resolve(self.init, guide, problem, minibatch, chosen=not callable(self.guide))
        optim = self._optimizer(num_steps)
        if start is not None:
            if not minibatch:
                guide._setup_prototype(*args)
            optim.step_scales = start.apply(guide)
        if world is not None:
            _start_alike(elbo, model, guide_run, (*args, distributed.shard(order["perm"][:batch_size], world)[0]))
        last_good = _LastGood()
        graph = {}  # after the first step: "params"; "traced", the ELBO as a graph (or None); "step", the one run
        timed = {}  # seconds of the first steps of each mode, which decide whether compiling pays
        use_graph = self.elbo_step in ("traced", "compiled") or (
            self.elbo_step == "auto" and not self.jit and num_steps >= TRACE_MIN_STEPS)

        def pyro_step(step_args):
            with poutine.trace(param_only=True) as traced, per_example_noise():
                try:
                    loss = elbo.loss_and_grads(model, guide_run, *step_args)
                except ValueError as err:
                    if not invalid_parameters(err):
                        raise
                    loss = math.nan
            params = [site["value"].unconstrained() for site in traced.trace.nodes.values()]
            if use_graph and "step" not in graph and math.isfinite(loss):
                graph["params"] = params
                graph["traced"] = trace_elbo_step(elbo, model, guide_run, list(traced.trace.nodes), step_args,
                                                  owners=(problem.model, guide))
                graph["step"] = self._asked_for(graph["traced"], params, step_args, notes)
            # one sum is non-finite when any gradient is (one sync, not one per parameter)
            grad_sum = sum(p.grad.sum() for p in params if p.grad is not None)
            return loss, math.isfinite(loss) and math.isfinite(float(grad_sum)), params

        def graph_step(t, step_args):
            step, params = graph["step"], graph["params"]
            start = time.perf_counter()
            loss, finite, grads = step(params, step_args)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            loss, finite = float(loss), bool(finite)
            times = timed.setdefault(step.mode, [])
            if self.elbo_step == "auto" and len(times) < TIMED_STEPS:
                times.append(time.perf_counter() - start)
                if len(times) == TIMED_STEPS:
                    graph["step"] = _choose(step, graph["traced"], timed, params, step_args, num_steps - t)
            return loss, finite, params

        def step(t):
            step_args = args
            if minibatch:
                start = (t * batch_size) % n
                if start + batch_size > n:
                    order["perm"], start = permutation(), 0
                indices, share = order["perm"][start:start + batch_size], 1.0
                if world is not None:
                    indices, share = distributed.shard(indices, world)
                step_args = (*args, indices)
            loss, finite, params = graph_step(t, step_args) if graph.get("step") else pyro_step(step_args)
            if world is not None:
                loss, finite = distributed.average(params, loss, share)
            if not finite:
                for p in params:
                    p.grad = None
                last_good.restore()  # this step's parameters may already be wild (finite, but the next loss is not)
                what = f"the loss became {loss}" if not math.isfinite(loss) else "the gradient became non-finite"
                raise NonFinite(what)
            last_good.keep(params)
            optim.step(params)
            return loss / n

        status = run_steps(num_steps, step, "svi", problem.progress, losses=losses,
                           hint="lower lr, standardise the data, or use optimizer='clipped_adam'")
        status.warnings += notes
        samples, log_q = draw_from_guide(guide, args, sites, problem.num_samples)
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        return FitResult({k: v.unsqueeze(0) for k, v in samples.items()}, status=status, loss=losses,
                         params=params, log_q=log_q,
                         info={"num_steps": num_steps, "batch_size": batch_size,
                               "init": "prior" if start is None else "map",
                               "elbo_step": graph["step"].mode if graph.get("step") else "pyro"})

    def _num_steps(self, n, batch_size):
        if self.num_steps is not None and self.num_epochs is not None:
            raise ZooError("svi: give num_steps or num_epochs, not both")
        if self.num_epochs is not None:
            check_positive("svi: num_epochs", self.num_epochs)
            return self.num_epochs * math.ceil(n / batch_size)
        steps = 2000 if self.num_steps is None else self.num_steps
        check_positive("svi: num_steps", steps)
        return steps

    def _optimizer(self, num_steps):
        return Adam(self.lr, lr_gamma(self.lr_decay, num_steps),
                    clip=self.clip_norm if self.optimizer == "clipped_adam" else None)

    def _asked_for(self, step: ElboStep | None, params, step_args, notes) -> ElboStep | None:
        """The traced step, compiled if asked, or None; a note where the step asked for could not be had."""
        if step is not None and self.elbo_step == "compiled":
            step = step.compiled(params, step_args) or step
        if self.elbo_step in ("traced", "compiled") and (step is None or step.mode != self.elbo_step):
            notes.append(f"svi: elbo_step={self.elbo_step!r} was asked for, but the ELBO could not be "
                         f"{'traced' if step is None else 'compiled'} faithfully; ran "
                         f"{'Pyro' if step is None else 'the traced graph'} instead")
        return step


def _start_alike(elbo, model, guide, step_args) -> None:
    """Every process starts from rank 0's parameters (created by one loss evaluation), then draws its own
    random numbers."""
    with torch.no_grad():
        elbo.loss(model, guide, *step_args)
    params = [p for _, p in pyro.get_param_store().named_parameters()]
    for p in params:
        distributed.from_rank_0(p.data)
    rank = torch.distributed.get_rank()
    if rank:  # rank 0 draws as one process would
        pyro.set_rng_seed(int(torch.randint(2**31, ())) + rank)


def _choose(step: ElboStep, traced: ElboStep, timed: dict, params, step_args, steps_left: int) -> ElboStep:
    """After the first traced steps: compile if the time they took says it pays; after the first compiled
    steps: go back to the traced graph if they were no faster (convolutions can be)."""
    median = {mode: statistics.median(times) for mode, times in timed.items()}
    if step.mode == "traced":
        return (traced.worth_compiling(median["traced"], steps_left) and traced.compiled(params, step_args)) or traced
    return traced if median["compiled"] >= median["traced"] else step


class _LastGood:
    """The parameters as they were before the last update, which had a finite loss."""

    def __init__(self):
        self.params, self.copies = [], []

    def keep(self, params: list[torch.Tensor]) -> None:
        with torch.no_grad():
            if len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params, strict=True)):
                torch._foreach_copy_(self.copies, params)
            else:
                self.params, self.copies = list(params), [p.detach().clone() for p in params]

    def restore(self) -> None:
        if self.params:
            with torch.no_grad():
                torch._foreach_copy_(self.params, self.copies)


def _check_subsampling(model, args, batch_size):
    """Fail early, with the fix, when a model ignores the indices of plate 'data'."""
    try:
        with torch.no_grad():
            trace = poutine.trace(model).get_trace(*args, torch.arange(batch_size, device=args[0].device))
        sizes = {s["fn"].batch_shape[f.dim] for s in trace.nodes.values()
                 if s["type"] == "sample" and s["is_observed"] and not s["infer"].get("_deterministic")
                 for f in s["cond_indep_stack"] if f.name == DATA_PLATE}
    except (ValueError, RuntimeError) as err:
        sizes = {str(err)}
    if sizes != {batch_size}:
        raise ZooError("svi: minibatches (batch_size=, or a fit split over processes by torchrun) need a model "
                       "whose observations sit in "
                       "`with pyro.plate('data', len(x)) as idx:` and index the data with idx "
                       "(x[idx], y[idx]); this model does not, so leave batch_size=None and run in one process")


def _prototype_on_minibatch(guide: AutoGuide, args: tuple, indices: torch.Tensor) -> None:
    """An autoguide traces its model once to learn the sites, hiding the data plate's subsample from outer
    handlers, so on a minibatched fit that trace ran the model on all the data (2.7 s of a 10 s fit of
    lstm on 20,000 SST-2 phrases); run it on one minibatch instead: global sites' shapes do not depend on
    how many points the model saw."""
    held = getattr(guide, "_model", None)  # Pyro keeps the model as a 1-tuple behind a read-only property
    if not (isinstance(held, tuple) and len(held) == 1):
        return
    guide._model = (MinibatchIndices(indices)(held[0]),)
    try:
        guide._setup_prototype(*args)
    finally:
        guide._model = held
