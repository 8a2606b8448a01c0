"""The model's log density as a function of one flat vector of unconstrained latents, for a batch of
such vectors: what Laplace, NUTS and the approximation diagnostics share."""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro.distributions.transforms import biject_to

from .draws import DrawRunner, choose_path, log_joint
from .sites import Sites, is_sample, run_trace

SCALAR = {"log_joint": torch.Size([])}


class FlatLatents:
    """Constrained values of the latent sites <-> one unconstrained vector per draw.

    ``unpack(theta[..., D])`` gives ``{site: value[..., *shape]}`` and the log |Jacobian| of the map
    (shape ``theta.shape[:-1]``); ``pack`` is its inverse. Site order is the model's.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], transforms: dict):
        self.names = list(shapes)
        self.shapes = {n: tuple(s) for n, s in shapes.items()}
        self.transforms = transforms
        self.free_shapes = {n: tuple(transforms[n].inverse_shape(torch.Size(self.shapes[n]))) for n in self.names}
        self.spans, start = {}, 0
        for n in self.names:
            size = math.prod(self.free_shapes[n])
            self.spans[n] = (start, start + size)
            start += size
        self.dim = start

    @classmethod
    def from_trace(cls, trace, names) -> FlatLatents:
        return cls({n: tuple(trace.nodes[n]["value"].shape) for n in names},
                   {n: biject_to(trace.nodes[n]["fn"].support) for n in names})

    def coordinates(self, names, device=None) -> torch.Tensor:
        """Indices into the flat vector of the sites ``names``."""
        return torch.cat([torch.arange(*self.spans[n], device=device) for n in names])

    def split(self, theta) -> dict[str, torch.Tensor]:
        """Unconstrained values per site, (..., *free shape); ``theta`` flat, or already split."""
        if isinstance(theta, dict):
            return theta
        lead = theta.shape[:-1]
        return {n: theta[..., a:b].reshape(tuple(lead) + self.free_shapes[n]) for n, (a, b) in self.spans.items()}

    def unpack(self, theta) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Constrained values per site and log |J|, from a flat ``theta`` (..., D) or its :meth:`split`."""
        parts = self.split(theta)
        first = parts[self.names[0]] if self.names else torch.zeros(0)
        lead = first.shape[:first.dim() - len(self.free_shapes[self.names[0]])] if self.names else ()
        values, log_det = {}, torch.zeros(lead, device=first.device)
        for n, u in parts.items():
            x = self.transforms[n](u)
            values[n] = x
            log_det = log_det + self.transforms[n].log_abs_det_jacobian(u, x).reshape(*lead, -1).sum(-1)
        return values, log_det

    def constrain(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.unpack(theta)[0]

    def pack(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for n in self.names:
            u = self.transforms[n].inv(values[n])
            lead = u.shape[:u.dim() - len(self.free_shapes[n])]
            parts.append(u.reshape(*lead, -1))
        return torch.cat(parts, -1)


class LogDensity:
    """``log_density(theta[B, D]) -> [B]``: log p(theta, y) in unconstrained coordinates (log |J| included),
    vectorised over the B vectors by the model's path (``"plate"``, ``"vmap"`` or ``"loop"``).

    ``indices`` evaluates the data term on those points of plate "data", scaled by N / B.
    """

    def __init__(self, model: Callable, args: tuple, sites: Sites, latents: FlatLatents, path: str):
        self.model, self.args, self.sites, self.latents = model, args, sites, latents
        self.runner = DrawRunner(model, sites, path)

    def __call__(self, theta: torch.Tensor, indices=None) -> torch.Tensor:
        single = theta.dim() == 1
        theta = theta.unsqueeze(0) if single else theta
        values, log_det = self.latents.unpack(theta)
        total = self.runner.run(values, self.args, log_joint, indices, SCALAR)["log_joint"] + log_det
        return total[0] if single else total

    def value_and_grad(self, theta: torch.Tensor, indices=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Log density and its gradient for each row of ``theta``."""
        theta = theta.detach().requires_grad_(True)
        value = self(theta, indices)
        (grad,) = torch.autograd.grad(value.sum(), theta)
        return value.detach(), grad


def initial_point(model: Callable, args: tuple, sites: Sites,
                  init_loc_fn: Callable) -> tuple[FlatLatents, torch.Tensor]:
    """The flat map of the model's latents and the start ``init_loc_fn`` gives, as one vector."""
    device = args[0].device if args and isinstance(args[0], torch.Tensor) else None
    indices = torch.arange(2, device=device) if sites.subsamplable else None
    trace = run_trace(model, args, init_loc_fn, indices)
    names = [n for n in trace.nodes if n in sites.latent and is_sample(trace.nodes[n])]
    latents = FlatLatents.from_trace(trace, names)
    return latents, latents.pack({n: trace.nodes[n]["value"] for n in names}).detach()


def decide_path(problem) -> str:
    """How to run the problem's model over many draws (see :func:`zoo.inference.draws.choose_path`), checked
    at two draws near its initial point, on a few points of plate "data" when the model can be subsampled."""
    model, sites, args = problem.model, problem.sites, problem.args
    if not sites.latent:
        return "plate"
    # its own start: init_loc_fn may draw (init_to_median), and the fit's start is drawn after this check
    latents, theta = initial_point(model, args, sites, problem.init_loc_fn)
    with torch.random.fork_rng(devices=[]):  # the check leaves the user's random stream alone
        torch.manual_seed(0)
        trial = theta + 0.3 * torch.randn(2, theta.numel(), device=theta.device)
    rows = args[0].shape[0]
    indices = torch.arange(min(rows, 16), device=theta.device) if sites.subsamplable else None
    return choose_path(model, sites, args, latents.constrain(trial), indices)


# the PSIS check of an approximation costs one pass of the model per draw: kept to models this small
PSIS_MAX_DIM = 5000


def importance_log_ratios(problem, samples: dict, log_q: torch.Tensor, chunk: int = 256) -> torch.Tensor | None:
    """log p(theta_s, y) - log q(theta_s) at each draw (both on the constrained scale), the raw material of
    the PSIS diagnostic (Yao et al. 2018); None where the model is too big for the check."""
    latents, density, _ = problem.flat()
    if latents.dim > PSIS_MAX_DIM or problem.sites.local:
        return None
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in samples.items()}
    theta = latents.pack(flat)
    with torch.no_grad(), pyro.validation_enabled(False):  # a draw where the model is undefined has p = 0
        log_p = torch.cat([density(block) - latents.unpack(block)[1] for block in theta.split(chunk)])
    return torch.nan_to_num(log_p, nan=-torch.inf, posinf=-torch.inf) - log_q.to(log_p.device)
