"""Stochastic variational inference: minibatches, vectorised particles, a schedule, a guarded loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import pyro
import torch
from pyro import poutine
from pyro.infer import JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.util import zero_grads

from .._errors import ZooError
from .._noise import per_example_noise
from ._base import (
    FitResult,
    check_positive,
    draw_from_guide,
    lr_gamma,
    on_minibatch,
    register_backend,
)
from .elbo_graph import trace_elbo_step
from .loop import NonFinite, run_steps
from .sites import DATA_PLATE

ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO}
JIT_ELBOS = {"trace": JitTrace_ELBO, "meanfield": JitTraceMeanField_ELBO}
# tracing the step (elbo_graph.py) costs about 200 of Pyro's steps and then halves each step's ELBO: shorter
# fits keep Pyro's step
TRACE_MIN_STEPS = 500


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
    jit : bool
        Compile the ELBO with the PyTorch JIT (faster steps after a slow first one; TorchScript, deprecated).

    A fit of at least 500 steps runs its step, after the first, as the ELBO's loss and gradients traced
    once into an FX graph (zoo/inference/elbo_graph.py) where that graph gives Pyro's loss and gradients
    at the same random numbers; ``post.info["elbo_step"]`` says ``"traced"`` or ``"pyro"``. A model whose
    Python state changes between steps (a counter read inside it) must pass that state as data.
    """

    name: ClassVar[str] = "svi"
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

    def fit(self, problem) -> FitResult:
        if self.elbo not in ELBOS:
            raise ZooError(f"svi: elbo must be one of {sorted(ELBOS)}, got {self.elbo!r}")
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
        minibatch = batch_size < n
        model = on_minibatch(problem.model) if minibatch else problem.model
        guide_run = on_minibatch(guide) if minibatch else guide
        elbo_options = dict(num_particles=self.num_particles, vectorize_particles=self.num_particles > 1,
                            max_plate_nesting=sites.max_plate_nesting)
        if self.jit:
            elbo = JIT_ELBOS[self.elbo](**elbo_options, ignore_jit_warnings=True)
        else:
            elbo = ELBOS[self.elbo](**elbo_options)
        optim = self._optimizer(num_steps)
        if minibatch:
            _check_subsampling(model, args, batch_size)

        losses = []
        order = {"perm": torch.randperm(n, device=args[0].device)}
        last_good = {}  # each parameter as it was before the last update, which had a finite loss

        def restore():
            with torch.no_grad():
                for p, value in last_good.items():
                    p.copy_(value)

        def keep(unconstrained):
            with torch.no_grad():
                for p in unconstrained:
                    if p in last_good:
                        last_good[p].copy_(p)
                    else:
                        last_good[p] = p.detach().clone()

        traced = {}  # after the first step: the parameters, and the step as a graph (or None)

        def pyro_step(step_args):
            with poutine.trace(param_only=True) as params, per_example_noise():
                try:
                    loss = elbo.loss_and_grads(model, guide_run, *step_args)
                except ValueError as err:  # a distribution built from NaN parameters
                    if "invalid values" not in str(err):
                        raise
                    loss = math.nan
            unconstrained = {name: site["value"].unconstrained() for name, site in params.trace.nodes.items()}
            if not traced and not self.jit and num_steps >= TRACE_MIN_STEPS and math.isfinite(loss):
                traced["params"] = list(unconstrained.values())
                traced["graph"] = trace_elbo_step(elbo, model, guide_run, list(unconstrained), step_args,
                                                  owners=(problem.model, guide))
            return loss, set(unconstrained.values())

        def graph_step(step_args):
            params = traced["params"]
            loss, grads = traced["graph"](params, *step_args)
            for p, g in zip(params, grads, strict=True):
                p.grad = g
            return float(loss), params

        def step(t):
            step_args = args
            if minibatch:
                start = (t * batch_size) % n
                if start + batch_size > n:
                    order["perm"], start = torch.randperm(n, device=args[0].device), 0
                step_args = (*args, order["perm"][start:start + batch_size])
            loss, unconstrained = (graph_step if traced.get("graph") else pyro_step)(step_args)
            # one sum is non-finite when any gradient is (one sync, not one per parameter)
            grad_sum = sum(p.grad.sum() for p in unconstrained if p.grad is not None)
            if not math.isfinite(loss) or not math.isfinite(float(grad_sum)):
                zero_grads(unconstrained)
                restore()  # this step's parameters may already be wild (finite, but the next loss is not)
                what = f"the loss became {loss}" if not math.isfinite(loss) else "the gradient became non-finite"
                raise NonFinite(what)
            keep(unconstrained)
            optim(unconstrained)
            zero_grads(unconstrained)
            if isinstance(optim, pyro.optim.PyroLRScheduler):
                optim.step()
            return loss / n

        status = run_steps(num_steps, step, "svi", problem.progress, losses=losses,
                           hint="lower lr, standardise the data, or use optimizer='clipped_adam'")
        samples, log_q = draw_from_guide(guide, args, sites, problem.num_samples)
        params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
        return FitResult({k: v.unsqueeze(0) for k, v in samples.items()}, status=status, loss=losses,
                         params=params, log_q=log_q,
                         info={"num_steps": num_steps, "batch_size": batch_size,
                               "elbo_step": "traced" if traced.get("graph") else "pyro"})

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
        gamma = lr_gamma(self.lr_decay, num_steps)
        if self.optimizer == "clipped_adam":
            return pyro.optim.ClippedAdam({"lr": self.lr, "lrd": gamma, "clip_norm": self.clip_norm})
        return pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": self.lr},
                                         "gamma": gamma})


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
        raise ZooError("svi: batch_size needs a model whose observations sit in "
                       "`with pyro.plate('data', len(x)) as idx:` and index the data with idx "
                       "(x[idx], y[idx]); this model does not, so leave batch_size=None")
