"""The backend protocol, the backend registry, and what every backend shares."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import pyro
import torch
from pyro import poutine

from .._errors import ZooError, unknown_name
from .distributed import World
from .flat import FlatLatents, LogDensity, initial_point
from .loop import Status
from .sites import MinibatchIndices, Sites, is_sample, on_points

BACKENDS: dict[str, type] = {}


class Backend(Protocol):
    name: str

    def fit(self, problem: Problem) -> FitResult:
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
class Problem:
    """What a backend needs and nothing more: the program and its data, its sites, how it runs over
    many draws (``path``), where latents start, and for svi / laplace the guides and the output layer."""

    model: Callable
    args: tuple
    sites: Sites
    num_samples: int
    progress: bool
    init_loc_fn: Callable
    path: str = "plate"
    make_guide: Callable | None = None
    last_layer: list[str] | None = None
    validation: tuple | None = None  # held-out arguments (fit's validation=)
    world: World | None = None  # the processes under torchrun (distributed.py); None: this one
    _flat: tuple | None = field(default=None, repr=False)

    def flat(self) -> tuple[FlatLatents, LogDensity, torch.Tensor]:
        """The flat map of the latents, the log density over it (on ``path``), and the initial point."""
        if self._flat is None:
            latents, theta = initial_point(self.model, self.args, self.sites, self.init_loc_fn)
            self._flat = latents, LogDensity(self.model, self.args, self.sites, latents, self.path), theta
        return self._flat


@dataclass
class FitResult:
    """What a backend hands back: draws shaped (chain, draw, ...), how the fit ended, its diagnostics."""

    samples: dict[str, torch.Tensor]
    status: Status = field(default_factory=Status)
    sample_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    loss: list[float] = field(default_factory=list)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    log_q: torch.Tensor | None = None  # svi / laplace: log density of the approximation at each draw


def draw_from_guide(guide: Callable, args: tuple, sites: Sites,
                    num_samples: int) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``num_samples`` draws of every latent site from ``guide``, one vectorised pass: (S, *shape), and
    log q of each draw (S,) where q is a density over the latents (None for point masses, discrete
    auxiliaries such as dropout masks, or per-point latents).

    With local latents the guide runs on one point: its global draws do not depend on the data, and
    S draws of every local latent of every point can outgrow memory (a 3-layer deep GP on protein).
    """
    if not sites.latent:  # per-point codes only: nothing global to draw
        return {}, None
    one_point = torch.zeros(1, dtype=torch.long, device=args[0].device) if sites.local else None
    mpn = sites.max_plate_nesting
    with torch.no_grad(), pyro.plate("_draws", num_samples, dim=-mpn - 1):
        trace = poutine.trace(on_points(guide, one_point)).get_trace(*args)
    samples = {name: trace.nodes[name]["value"].detach().reshape(num_samples, *shape)
               for name, (shape, _) in sites.latent.items()}
    guide_sites = [s for s in trace.nodes.values() if is_sample(s)]
    degenerate = (sites.local or num_samples < 2 or any(s["fn"].support.is_discrete for s in guide_sites)
                  or any(bool((v == v[:1]).all()) for v in samples.values()))
    if degenerate:
        return samples, None
    log_q = torch.zeros(num_samples, device=args[0].device)
    for site in guide_sites:
        lp = site["fn"].log_prob(site["value"]).detach()
        log_q = log_q + lp.reshape(lp.shape[:max(lp.dim() - mpn, 0)] + (-1,)).sum(-1).expand(num_samples)
    return samples, log_q


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
