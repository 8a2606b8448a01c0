"""The log density and its gradient as plain tensor code, traced once from the Pyro model.

Running a Pyro model costs its messenger stack, distribution objects and the autograd tape on every call:
most of a sampler's time on a small model. ``make_fx`` (the tracer behind torch.func and torch.compile, not
the deprecated TorchScript) records the aten operations one call performs, forward and backward, as an FX
graph that replays without any of that; inductor can then fuse the graph into a few kernels.

A trace freezes the control flow of the call it saw, so it is only used after it agrees with the model
run eagerly at fresh points; a model that branches on its latents' values, or cannot be traced, keeps the
eager path. Each mode is specialised to the batch size it was traced at.
"""

from __future__ import annotations

import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

import pyro
import torch

MODES = ("eager", "traced", "compiled")  # "compiled": the sampler compiles its leaf step around the trace
RTOL = 1e-4
SERIAL_MAX_ELEMENTS = 2**17  # a compiled step whose density's tensors are all smaller runs on one thread


def value_and_grad_fn(log_density: Callable, example: torch.Tensor, mode: str) -> tuple[Callable, str]:
    """``fn(theta[C, D]) -> (log p [C], grad [C, D])``, run by Pyro (``mode="eager"``) or as a trace, and the
    mode it got: ``"eager"`` where the model could not be traced faithfully."""

    def eager(theta):
        with pyro.validation_enabled(False):  # an invalid parameter gives a nan, which the sampler handles
            theta = theta.detach().requires_grad_(True)
            value = log_density(theta)
            (grad,) = torch.autograd.grad(value.sum(), theta)
            return value.detach(), grad

    if mode == "eager":
        return eager, "eager"
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with warnings.catch_warnings(), no_sample_checks():
            warnings.simplefilter("ignore")
            graph = make_fx(eager)(example.detach().clone())
    except Exception:  # anything the tracer cannot follow (data-dependent shapes, .item()): stay eager
        return eager, "eager"
    if not _agrees(eager, graph, example):
        return eager, "eager"
    return graph, "traced"


def largest_tensor(density: Callable) -> int | None:
    """The most elements of any tensor in a traced density's graph; None for an untraced density."""
    graph = getattr(density, "graph", None)
    sizes = [node.meta["val"].numel() for node in (graph.nodes if graph is not None else ())
             if isinstance(node.meta.get("val"), torch.Tensor)]
    return max(sizes) if sizes else None


def step_threads(density: Callable) -> int:
    """Threads for a compiled step around a traced density (-1: torch's count). One where the density's
    largest tensor is small: an OpenMP loop's start costs more than sharing it saves there."""
    largest = largest_tensor(density)
    return 1 if largest is not None and largest < SERIAL_MAX_ELEMENTS else -1


def compile_checked(fn: Callable, example: tuple, compared: Callable = lambda out: out,
                    threads: int = -1) -> Callable | None:
    """``fn`` fused by inductor for inputs shaped as ``example``'s (its loops on ``threads`` threads, -1 for
    torch's count), if it compiles here and gives ``fn``'s ``compared`` outputs on ``example``; else None."""
    from torch._inductor import config

    try:
        with keeps_ctrl_c(), warnings.catch_warnings(), config.patch({"cpp.threads": threads}):
            warnings.simplefilter("ignore")
            compiled = fused(fn, example)
            want, got = compared(fn(*example)), compared(compiled(*example))
    except Exception:  # no C++ compiler, an operation inductor does not lower: the caller stays uncompiled
        return None
    want, got = torch.utils._pytree.tree_leaves(want), torch.utils._pytree.tree_leaves(got)
    return compiled if len(want) == len(got) and all(map(close, want, got)) else None


def fused(fn: Callable, example: tuple) -> Callable:
    """``fn`` (tensors in, (named) tuples of tensors out) as one inductor-compiled graph of the aten operations
    it runs on ``example``. Traced by ``make_fx`` rather than dynamo: no Python frames to trace and no guards
    checked on every call, which cost a small graph more than its kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    flatten_in, unflatten_in = _tuples(example)
    leaves, out_tree = [], []
    flatten_in(example, leaves)

    def flat(*inputs):
        out = fn(*unflatten_in(iter(inputs)))
        out_tree.append(_tuples(out))
        flat_out = []
        out_tree[0][0](out, flat_out)
        return flat_out

    graph = make_fx(flat, tracing_mode="fake", _allow_non_fake_inputs=True)(*leaves)
    fake = FakeTensorMode(shape_env=ShapeEnv())  # with a shape env, inductor's graph cache can serve it
    run = torch._inductor.compile(graph, [fake.from_tensor(t, static_shapes=True) for t in leaves])
    unflatten_out = out_tree[0][1]

    def call(*args):
        inputs = []
        flatten_in(args, inputs)
        return unflatten_out(iter(run(*inputs)))

    return call


def _tuples(example) -> tuple[Callable, Callable]:
    """``flatten(x, out)`` and ``unflatten(iterator)`` for (named) tuples of tensors laid out as ``example``:
    a few list appends per call, where torch's general pytree costs a small compiled graph as much as its
    kernels."""
    if isinstance(example, torch.Tensor):
        return (lambda x, out: out.append(x)), next
    parts = [_tuples(e) for e in example]
    make = getattr(type(example), "_make", tuple)

    def flatten(x, out):
        for (flatten_part, _), e in zip(parts, x, strict=True):
            flatten_part(e, out)

    return flatten, lambda it: make([unflatten_part(it) for _, unflatten_part in parts])


@contextmanager
def no_sample_checks() -> Iterator[None]:
    """A distribution made while validation was on (a ``PyroSample`` prior built in a module's ``__init__``)
    checks every value's support, which reads the value: a trace cannot. The checks are off while tracing;
    the trace is then checked against the model run eagerly."""
    with mock.patch.object(torch.distributions.Distribution, "_validate_sample", lambda self, value: None):
        yield


@contextmanager
def keeps_ctrl_c() -> Iterator[None]:
    """Inductor's compile workers leave Ctrl-C ignored in this process: the fit's loop needs it back."""
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype:
        return False
    if a.dtype == torch.bool:
        return torch.equal(a, b)
    finite = torch.isfinite(a)
    return torch.equal(finite, torch.isfinite(b)) and torch.allclose(a[finite], b[finite], rtol=RTOL, atol=RTOL)


def _agrees(eager: Callable, traced: Callable, example: torch.Tensor) -> bool:
    """Whether the trace gives the model's values and gradients at the example and at two fresh points."""
    with torch.random.fork_rng(devices=[example.device] if example.is_cuda else []):
        torch.manual_seed(0)
        points = [example] + [example + scale * torch.randn_like(example) for scale in (0.3, 1.0)]
    for theta in points:
        try:
            want, got = eager(theta), traced(theta)
        except Exception:
            return False
        if not all(map(close, want, got)):
            return False
    return True
