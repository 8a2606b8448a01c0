"""The log density and its gradient as plain tensor code, traced once from the Pyro model.

Running a Pyro model costs its messenger stack, distribution objects and the autograd tape on every call:
most of a sampler's time on a small model. ``make_fx`` (the tracer behind torch.func and torch.compile, not
the deprecated TorchScript) records the aten operations one call performs, forward and backward, as an FX
graph that replays without any of that; ``torch.compile`` can then fuse the graph into a few kernels.

A trace freezes the control flow of the call it saw, so it is only used after it agrees with the model
run eagerly at fresh points; a model that branches on its latents' values, or cannot be traced, keeps the
eager path. Each mode is specialised to the batch size it was traced at.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pyro
import torch

MODES = ("eager", "traced", "compiled")
RTOL = 1e-4


def value_and_grad_fn(log_density: Callable, example: torch.Tensor, mode: str) -> tuple[Callable, str]:
    """``fn(theta[C, D]) -> (log p [C], grad [C, D])`` in ``mode`` (one of :data:`MODES`), and the mode it
    got: ``"eager"`` where the model could not be traced faithfully."""

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
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = make_fx(eager)(example.detach().clone())
    except Exception:  # anything the tracer cannot follow (data-dependent shapes, .item()): stay eager
        return eager, "eager"
    fn = torch.compile(graph, dynamic=False) if mode == "compiled" else graph
    if not _agrees(eager, fn, example):
        return eager, "eager"
    return fn, mode


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
        for a, b in zip(want, got, strict=True):
            finite = torch.isfinite(a)
            if not torch.equal(finite, torch.isfinite(b)) or not torch.allclose(a[finite], b[finite], rtol=RTOL,
                                                                                 atol=RTOL):
                return False
    return True
