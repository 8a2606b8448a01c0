"""The SVI step as plain tensor code: the ELBO's loss and its gradients traced once from Pyro.

``elbo.loss_and_grads`` runs the model and guide through Pyro's messengers and builds their distributions
on every step: milliseconds of Python on a small network whose arithmetic takes a tenth of that. Here one
call of ``differentiable_loss`` and its backward pass, with the parameters and the step's data as inputs,
is recorded by ``make_fx`` as an FX graph of aten operations; its random draws are operations of the
graph, so every replay draws afresh. The graph is used only if it gives Pyro's loss and gradients at the
same random numbers, and if it holds no trainable tensor as a constant (a parameter outside Pyro's
param store would be frozen into it); otherwise the step stays Pyro's. Replaying the graph still costs a
few microseconds per operation; :meth:`ElboStep.compiled` fuses it with inductor, keeping eager random
numbers (``fallback_random``) so that the compiled step can be checked against the graph draw for draw.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from unittest import mock

import pyro
import torch

from .._noise import per_example_noise
from .traced import RTOL, close, keeps_ctrl_c, no_sample_checks

# measured on 2 CPU cores (bnn, 604 operations): replaying the graph costs about 3.5 us per operation,
# which compiling removes; compiling costs about 12 ms per operation
REPLAY_SECONDS_PER_OP = 3.5e-6
COMPILE_SECONDS_PER_OP = 12e-3


@dataclass(frozen=True)
class ElboStep:
    """``step(params, args) -> (loss, finite, grads)``: the ELBO's loss, whether it and every gradient are
    finite (one tensor, one sync), and the gradients of the unconstrained ``params`` of Pyro's param store."""

    graph: Callable  # (*params, *tensor args) -> (loss, finite, *grads)
    tensor_at: tuple[int, ...]  # where the step's tensor arguments sit (the rest are fixed for the fit)
    num_ops: int
    mode: str = "traced"

    def __call__(self, params: list[torch.Tensor], args: tuple):
        with torch.no_grad():  # the graph holds its backward pass: no tape to record around it
            loss, finite, *grads = self.graph(*params, *(args[i] for i in self.tensor_at))
        return loss, finite, grads

    def worth_compiling(self, seconds_per_step: float, steps_left: int) -> bool:
        """Whether compiling, at its cost here, is paid back by the replay time it saves over the fit."""
        saved = min(seconds_per_step, self.num_ops * REPLAY_SECONDS_PER_OP) * steps_left
        return saved > self.num_ops * COMPILE_SECONDS_PER_OP

    def compiled(self, params: list[torch.Tensor], args: tuple) -> ElboStep | None:
        """The graph fused by inductor, if it compiles here and gives the graph's loss and gradients at the
        same random numbers; else None."""
        inputs = [*(p.detach() for p in params), *(args[i] for i in self.tensor_at)]
        try:
            with keeps_ctrl_c(), torch._inductor.config.patch(fallback_random=True), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fused = replace(self, graph=torch._inductor.compile(self.graph, inputs), mode="compiled")
        except Exception:  # no C++ compiler, an operation inductor does not lower
            return None

        def replayed():
            loss, _, grads = self(params, args)
            return loss, grads

        return fused if _agrees(fused, replayed, params, args) else None


def trace_elbo_step(elbo, model: Callable, guide: Callable, names: list[str], args: tuple,
                    owners: tuple = ()) -> ElboStep | None:
    """The step for the unconstrained parameters ``names`` of Pyro's param store, replaying ``elbo``'s loss
    and gradients; None where it cannot be traced faithfully. ``owners``: the modules (model, guide) whose
    PyroModule parameters are those of the store."""
    store = pyro.get_param_store()
    params = [store._params[name] for name in names]
    # where each parameter is held: the store, and any PyroModule attribute holding the same tensor (a
    # PyroModule whose attribute is not the store's tensor re-wraps the store's as a new nn.Parameter,
    # cutting it from the traced leaves): all are set to the leaf while the step is traced
    in_modules = _module_slots(owners, params)
    holders = [[(store._params, name), *slots] for name, slots in zip(names, in_modules, strict=True)]
    tensor_at = tuple(i for i, a in enumerate(args) if isinstance(a, torch.Tensor))

    def loss_and_grads(*inputs):
        leaves = [p.detach().requires_grad_(True) for p in inputs[:len(params)]]
        step_args = list(args)
        for i, value in zip(tensor_at, inputs[len(params):], strict=True):
            step_args[i] = value
        saved = [[holder[key] for holder, key in held] for held in holders]
        try:
            for leaf, held in zip(leaves, holders, strict=True):
                for holder, key in held:
                    holder[key] = leaf
            with per_example_noise(), pyro.validation_enabled(False), _untraceable_off(elbo):
                loss = elbo.differentiable_loss(model, guide, *step_args)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        finally:
            for values, held in zip(saved, holders, strict=True):
                for value, (holder, key) in zip(values, held, strict=True):
                    holder[key] = value
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)]
        finite = torch.isfinite(sum((g.sum() for g in grads), loss.detach()))  # inf - inf is nan too
        return (loss.detach(), finite, *grads)

    from torch.fx.experimental.proxy_tensor import make_fx

    try:  # tracing runs the step once: on random numbers of its own, so the fit's stream is as without it
        with warnings.catch_warnings(), torch.random.fork_rng(devices=_rng_devices(params)), no_sample_checks():
            warnings.simplefilter("ignore")
            graph = make_fx(loss_and_grads)(*(p.detach() for p in params), *(args[i] for i in tensor_at))
    except Exception:  # data-dependent shapes, .item(), an op the tracer cannot follow
        return None
    step = ElboStep(graph, tensor_at, num_ops=sum(node.op == "call_function" for node in graph.graph.nodes))
    if _holds_a_parameter(graph, params) or not _agrees(step, _pyro_loss_and_grads(elbo, model, guide, params, args),
                                                        params, args):
        return None
    return step


def _module_slots(owners: tuple, params: list[torch.Tensor]) -> list[list[tuple[dict, str]]]:
    """For each parameter, the (module._parameters, key) entries of ``owners``' modules holding it."""
    index = {id(p): i for i, p in enumerate(params)}
    slots: list[list[tuple[dict, str]]] = [[] for _ in params]
    for owner in owners:
        if isinstance(owner, torch.nn.Module):
            for module in owner.modules():
                for key, value in module._parameters.items():
                    if id(value) in index:
                        slots[index[id(value)]].append((module._parameters, key))
    return slots


@contextmanager
def _untraceable_off(elbo):
    """Validation reads values, and so do the ELBO's float copy of the loss (``torch_item``) and its nan
    warning: none can be traced. The surrogate loss returned instead is the loss where every site is
    reparameterised, which _agrees checks against Pyro's."""
    module = sys.modules[type(elbo).__module__]
    with mock.patch.object(module, "torch_item", lambda x: x, create=True), \
            mock.patch.object(module, "warn_if_nan", lambda x, *args, **kwargs: x, create=True):
        yield


def _rng_devices(params: list[torch.Tensor]) -> list[torch.device]:
    """The CUDA device whose random state fork_rng must keep as well (the CPU's is always kept)."""
    return [p.device for p in params[:1] if p.is_cuda]


def _holds_a_parameter(graph: torch.fx.GraphModule, params: list[torch.Tensor]) -> bool:
    """Whether the trace froze a trainable tensor in as a constant (a buffer or a lifted attribute)."""
    pointers = {p.data_ptr() for p in params}
    constants = [*graph.buffers(), *(v for v in vars(graph).values() if isinstance(v, torch.Tensor))]
    return any(v.requires_grad or v.data_ptr() in pointers for v in constants)


def _pyro_loss_and_grads(elbo, model, guide, params: list[torch.Tensor], args: tuple) -> Callable:
    """Pyro's own step, as ``() -> (loss, grads)``; the parameters' ``.grad`` is left as it was."""

    def run():
        kept = [p.grad for p in params]
        try:
            for p in params:
                p.grad = None
            with per_example_noise(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loss = elbo.loss_and_grads(model, guide, *args)
            return torch.tensor(float(loss)), [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        finally:
            for p, grad in zip(params, kept, strict=True):
                p.grad = grad

    return run


def _agrees(step: ElboStep, reference: Callable, params: list[torch.Tensor], args: tuple) -> bool:
    """The step's loss and gradients against ``reference() -> (loss, grads)``, at the same random numbers,
    twice."""
    for seed in (0, 1):
        with torch.random.fork_rng(devices=_rng_devices(params)):
            torch.manual_seed(seed)
            loss, _, grads = step([p.detach() for p in params], args)
            torch.manual_seed(seed)
            want_loss, want_grads = reference()
        if not close(loss.reshape(1), want_loss.reshape(1).to(loss.dtype)):
            return False
        for g, reference_grad in zip(grads, want_grads, strict=True):
            scale = max(float(reference_grad.abs().max()) if reference_grad.numel() else 0.0, 1.0)
            if not torch.allclose(g, reference_grad, rtol=RTOL, atol=RTOL * scale):
                return False
    return True
