"""Held-out observations: split off from the training data, and the log predictive density that scores a fit
on them (Laplace's prior-precision grid and its MAP's early stop)."""

from __future__ import annotations

import math

import torch

from .._data import rows_of
from .._errors import ZooError
from .draws import DrawRunner, observed_log_probs

POINT_DRAWS = 10_000  # points x draws in one vectorised pass


def holdout(args: tuple, fraction: float, seed: int | None) -> tuple[tuple, tuple]:
    """``args`` split by rows into (kept, held out): a random ``fraction`` of the points held out."""
    if not 0 < fraction < 1:
        raise ZooError(f"validation={fraction!r}: a fraction of the training points must lie between 0 and 1 "
                       "(e.g. 0.1), or pass the validation data itself")
    n = args[0].shape[0] if isinstance(args[0], torch.Tensor) and args[0].dim() else 0
    held = round(fraction * n)
    if held < 1 or held >= n:
        raise ZooError(f"validation={fraction}: holding out {held} of {n} points leaves nothing to "
                       f"{'validate on' if held < 1 else 'fit'}; pick another fraction or pass validation data")
    generator = torch.Generator().manual_seed(0 if seed is None else seed)
    order = torch.randperm(n, generator=generator).to(args[0].device)
    return rows_of(args, order[held:].sort().values), rows_of(args, order[:held].sort().values)


def joined(args: tuple, held: tuple) -> tuple:
    """The rows of ``held`` appended to those of ``args`` (undoes :func:`holdout`, up to the order)."""
    pairs = zip(args, held, strict=True)
    return tuple(torch.cat([a, h]) if isinstance(a, torch.Tensor) and a.dim() else a for a, h in pairs)


class Validation:
    """The mean log predictive density per held-out point, ``log mean_s p(y_i | theta_s)``, of a model's
    observed sites, under a runner (the model itself at each draw, or Laplace's linearised network)."""

    def __init__(self, model, sites, path: str, args: tuple):
        self.model, self.sites, self.args = model, sites, args
        self.runner = DrawRunner(model, sites, path)
        self.num_points = max(args[0].shape[0], 1) if isinstance(args[0], torch.Tensor) and args[0].dim() else 1

    def log_density(self, draws: dict, runner=None) -> float:
        """Mean log predictive density of the held-out points over ``draws`` (site -> (S, ...))."""
        runner = runner or self.runner
        num = next(iter(draws.values())).shape[0] if draws else 1
        size = max(1, POINT_DRAWS // num)
        total = 0.0
        with torch.no_grad():
            for start in range(0, self.num_points, size):
                block = rows_of(self.args, slice(start, start + size))
                for log_prob in runner.run(draws, block, observed_log_probs(self.sites.observed)).values():
                    log_prob = log_prob.reshape(log_prob.shape[0], -1).double()
                    total += float((torch.logsumexp(log_prob, 0) - math.log(log_prob.shape[0])).sum())
        return total / self.num_points


class EarlyStop:
    """Keeps the point with the best held-out log-likelihood seen; ``check`` says when ``patience`` checks in a
    row have not improved on it."""

    def __init__(self, validation: Validation, latents, patience: int):
        self.validation, self.latents, self.patience = validation, latents, patience
        self.best, self.point, self.waits = -math.inf, None, 0
        self.checks = self.best_check = 0  # checks made; the one (counted from 1) that found the best point

    @property
    def stopped(self) -> bool:
        return self.waits >= self.patience

    def check(self, theta: torch.Tensor) -> bool:
        """Score the flat point ``theta``; True when it is time to stop."""
        values, _ = self.latents.unpack(theta.detach().unsqueeze(0))
        score = self.validation.log_density(values)
        self.checks += 1
        if score > self.best:
            self.best, self.point, self.waits, self.best_check = score, theta.detach().clone(), 0, self.checks
        else:
            self.waits += 1
        return self.stopped
