"""The SVI step as plain tensor code: the ELBO's loss and its gradients traced once from Pyro.

``elbo.loss_and_grads`` runs the model and guide through Pyro's messengers and builds their distributions
on every step: milliseconds of Python on a small network whose arithmetic takes a tenth of that. Here one
call of ``differentiable_loss`` and its backward pass, with the parameters and the step's data as inputs,
is recorded by ``make_fx`` as an FX graph of aten operations; its random draws are operations of the
graph, so every replay draws afresh. The graph is used only if it gives Pyro's loss and gradients at the
same random numbers, and if it holds no trainable tensor as a constant (a parameter outside Pyro's
param store would be frozen into it); otherwise the step stays Pyro's.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from unittest import mock

import pyro
import torch

from .._noise import per_example_noise
from .traced import RTOL, _close

Step = Callable[..., tuple[torch.Tensor, list[torch.Tensor]]]  # (params, *args) -> loss, grads


def trace_elbo_step(elbo, model: Callable, guide: Callable, names: list[str], args: tuple,
                    owners: tuple = ()) -> Step | None:
    """``step(params, *args) -> (loss, grads)`` for the unconstrained parameters ``names`` of Pyro's param
    store, replaying ``elbo``'s loss and gradients; None where it cannot be traced faithfully. ``owners``:
    the modules (model, guide) whose PyroModule parameters are those of the store."""
    store = pyro.get_param_store()
    params = [store._params[name] for name in names]
    # where each parameter is held: the store, and any PyroModule attribute holding the same tensor (a
    # PyroModule whose attribute is not the store's tensor re-wraps the store's as a new nn.Parameter,
    # cutting it from the traced leaves): all are set to the leaf while the step is traced
    in_modules = _module_slots(owners, params)
    holders = [[(store._params, name), *slots] for name, slots in zip(names, in_modules, strict=True)]

    def loss_and_grads(params, *step_args):
        leaves = [p.detach().requires_grad_(True) for p in params]
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
        return loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)]

    from torch.fx.experimental.proxy_tensor import make_fx

    try:  # tracing runs the step once: on random numbers of its own, so the fit's stream is as without it
        with warnings.catch_warnings(), torch.random.fork_rng(devices=_rng_devices(params)):
            warnings.simplefilter("ignore")
            graph = make_fx(loss_and_grads)([p.detach() for p in params], *args)
    except Exception:  # data-dependent shapes, .item(), an op the tracer cannot follow
        return None
    if _holds_a_parameter(graph, params) or not _agrees(graph, elbo, model, guide, params, args):
        return None
    return graph


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


def _agrees(graph: Step, elbo, model, guide, params: list[torch.Tensor], args: tuple) -> bool:
    """The graph's loss and gradients against Pyro's own ``loss_and_grads``, at the same random numbers,
    twice."""
    kept = [p.grad for p in params]
    try:
        for seed in (0, 1):
            with torch.random.fork_rng(devices=_rng_devices(params)):
                torch.manual_seed(seed)
                loss, grads = graph([p.detach() for p in params], *args)
                torch.manual_seed(seed)
                for p in params:
                    p.grad = None
                with per_example_noise(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    want = elbo.loss_and_grads(model, guide, *args)
            if not _close(loss.reshape(1), torch.tensor([float(want)], dtype=loss.dtype)):
                return False
            for p, g in zip(params, grads, strict=True):
                reference = torch.zeros_like(p) if p.grad is None else p.grad
                scale = max(float(reference.abs().max()) if reference.numel() else 0.0, 1.0)
                if not torch.allclose(g, reference, rtol=RTOL, atol=RTOL * scale):
                    return False
    finally:
        for p, grad in zip(params, kept, strict=True):
            p.grad = grad
    return True
