"""The backend protocol, the backend registry, and what every backend shares."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from .._errors import ZooError, unknown_name

BACKENDS: dict[str, type] = {}
DATA_PLATE = "data"


class Backend(Protocol):
    name: str

    def fit(self, zm, args: tuple, sites: Sites, *, num_samples: int, progress: bool) -> FitResult:
        ...


def register_backend(cls):
    """Register a backend class (a dataclass whose fields are its options) under ``cls.name``."""
    BACKENDS[cls.name] = cls
    return cls


def make_backend(backend, options: dict) -> Backend:
    """A configured backend from a name plus options, or the backend object itself."""
    if not isinstance(backend, str):
        if options:
            raise ZooError(f"options {sorted(options)} go to the backend object itself when "
                           "backend= is an object, not to fit()")
        return backend
    if backend not in BACKENDS:
        raise unknown_name("backend", backend, BACKENDS)
    cls = BACKENDS[backend]
    accepted = [f.name for f in dataclasses.fields(cls)]
    for key in options:
        if key not in accepted:
            raise unknown_name(f"option of backend {backend!r}", key, accepted, known_as="Its options")
    return cls(**options)


@dataclass
class FitResult:
    """What a backend hands back: draws shaped (chain, draw, ...) plus its own diagnostics."""

    samples: dict[str, torch.Tensor]
    sample_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: list[float] = field(default_factory=list)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)


@dataclass
class Sites:
    """The model's global latent sites (name -> (shape, event_dim)), its observed sites, and its local
    latents: per-point sites inside plate "data" (name -> event shape), allowed when its guides draw them."""

    latent: dict[str, tuple[tuple[int, ...], int]]
    observed: list[str]
    local: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, model: Callable, args: tuple, allow_local: bool = False) -> Sites:
        # two points show every global site's shape without a forward pass over all the data
        head = tuple(a[:2] if isinstance(a, torch.Tensor) and a.dim() > 0 else a for a in args)
        with torch.no_grad():
            trace = poutine.trace(model).get_trace(*head)
        latent, observed, local = {}, [], {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("is_auxiliary") or site["infer"].get("_deterministic"):
                continue
            if site["is_observed"]:
                observed.append(name)
            elif not isinstance(site["fn"], _Subsample) and name != DATA_PLATE:
                if not any(f.name == DATA_PLATE for f in site["cond_indep_stack"]):
                    latent[name] = (tuple(site["value"].shape), site["fn"].event_dim)
                elif allow_local:
                    local[name] = tuple(site["fn"].event_shape)
                else:
                    raise ZooError(f"site {name!r} is a local latent inside plate 'data'; the backends keep "
                                   "global latents only, unless the model's own guides draw it "
                                   "(ZooModel(local_latents=True)) and it is fitted with svi")
        if not observed:
            raise ZooError("the model has no observed site: pass the observations as its last "
                           "argument and use pyro.sample(..., obs=y)")
        return cls(latent, observed, local)


def draw_from_guide(guide: Callable, args: tuple, sites: Sites, num_samples: int,
                    max_plate_nesting: int) -> dict[str, torch.Tensor]:
    """``num_samples`` draws of every latent site from ``guide``, one vectorised pass: (S, *shape).

    With local latents the guide runs on one point: its global draws do not depend on the data, and
    S draws of every local latent of every point can outgrow memory (a 3-layer deep GP on protein).
    """
    if not sites.latent:  # per-point codes only: nothing global to draw
        return {}
    one_point = MinibatchIndices(torch.zeros(1, dtype=torch.long, device=args[0].device))
    with (torch.no_grad(), pyro.plate("_draws", num_samples, dim=-max_plate_nesting - 1),
          one_point if sites.local else contextlib.nullcontext()):
        trace = poutine.trace(guide).get_trace(*args)
    return {name: trace.nodes[name]["value"].detach().reshape(num_samples, *shape)
            for name, (shape, _) in sites.latent.items()}


class MinibatchIndices(Messenger):
    """Sets the indices of ``pyro.plate("data", N)`` so it sees a minibatch with scale N / B.

    The model takes the full data and indexes it with the plate's indices
    (``with pyro.plate("data", len(x)) as idx: ... x[idx]``), the idiom of Pyro's subsampling.
    """

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.indices = indices

    def _pyro_sample(self, msg):
        if msg["name"] == DATA_PLATE and isinstance(msg["fn"], _Subsample):
            msg["value"] = self.indices


def on_minibatch(fn: Callable) -> Callable:
    """``fn(*data)`` as ``wrapped(*data, indices)``: the indices travel as an argument, so a
    JIT-compiled ELBO sees them as an input rather than freezing one minibatch into its graph."""

    def wrapped(*args):
        *data, indices = args
        with MinibatchIndices(indices):
            return fn(*data)

    return wrapped


def lr_gamma(lr_decay: float, num_steps: int) -> float:
    """Per-step factor of an exponential schedule that ends at ``lr * lr_decay``."""
    if not 0 < lr_decay <= 1:
        raise ZooError(f"lr_decay must be in (0, 1], got {lr_decay}")
    return lr_decay ** (1.0 / max(num_steps, 1))


def check_positive(name: str, value, integer: bool = True) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or value <= 0 or (not integer and not math.isfinite(value)):
        kind = "a positive integer" if integer else "a positive number"
        raise ZooError(f"{name} must be {kind}, got {value!r}")
