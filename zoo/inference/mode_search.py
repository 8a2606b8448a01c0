"""Laplace's search for the mode: L-BFGS on the full data (with Newton's polish) or Adam on minibatches, guarded
against non-finite losses, stopped early on held-out data when asked."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .._errors import ZooError
from ._base import lr_gamma
from .curvature import LaplaceTerms, exact_curvature
from .loop import Converged, NonFinite, check_finite, converged, invalid_parameters, run_steps
from .validation import EarlyStop

OPTIMIZERS = ("auto", "lbfgs", "adam")
LBFGS_MAX_DIM = 1000  # auto: L-BFGS on the full data for models up to this many latent coordinates
LBFGS_CHUNK = 50  # L-BFGS iterations per step of the loop (num_steps counts iterations)
NEWTON_POLISH = 20  # Newton steps after L-BFGS; a search L-BFGS cannot finish takes up to NEWTON_STEPS
NEWTON_STEPS = 200


@dataclass
class ModeSearch:
    """The MAP of a log joint whose Normal priors' precisions are scaled by ``alpha`` (Laplace's options of the
    same names). Each run stopped early on held-out data adds its length (iterations to the best point) to
    ``lengths``; ``stop_after`` gives each run in turn a length to stop at (a refit on all the data)."""

    optimizer: str
    num_steps: int
    lr: float
    lr_decay: float
    patience: int | None = None
    stop_after: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def run(self, joint: LaplaceTerms, theta, alpha, progress: bool, losses: list, status, validation=None,
            extra_term=None, final: bool = True):
        """The mode from ``theta`` of the log joint plus ``extra_term(theta)`` if given: losses appended to
        ``losses``, the run's status merged into ``status``. Only a ``final`` run warns when it has not
        converged (an earlier round's MAP is a warm start for a target that moves)."""
        optimizer = self._optimizer(joint)
        kept = len(losses)
        stop = lambda: EarlyStop(validation, joint.latents, self.patience) if self.patience else None  # noqa: E731
        early, stop_after = stop(), self.stop_after.pop(0) if self.stop_after else None
        target = _Target(joint, alpha, extra_term)
        found, round_status = self._map(target, theta, progress, losses, optimizer, early, stop_after, final)
        if round_status.stopped and self.optimizer == "auto" and optimizer == "lbfgs":
            # a line search that strays where the model is undefined: damped Newton steps from the last finite
            # point do not (a small model, the full data), nor do Adam's small steps from the start
            del losses[kept:]
            converged = False
            if early is None and stop_after is None:
                found, round_status, converged = _newton(lambda t: -target(t) / joint.num_points, found,
                                                         NEWTON_STEPS, progress, losses)
            if not converged and round_status.interrupted is None:
                del losses[kept:]
                early = stop()
                found, round_status = self._map(target, theta, progress, losses, "adam", early, stop_after, final)
        if early is not None:
            self.lengths.append(early.best_check * LBFGS_CHUNK)
        status.merge(round_status)
        return found

    def _optimizer(self, joint) -> str:
        if self.optimizer not in OPTIMIZERS:
            raise ZooError(f"laplace: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer != "auto":
            return self.optimizer
        small = joint.latents.dim <= LBFGS_MAX_DIM and joint.batch_size is None
        return "lbfgs" if small else "adam"

    def _map(self, target: _Target, start, progress: bool, losses: list, optimizer: str,
             early: EarlyStop | None = None, stop_after: int | None = None, final: bool = True):
        """The mode of ``target`` from ``start`` (L-BFGS or Adam); the last finite point and the status. With
        ``early``, the point of best held-out log-likelihood, checked every chunk of 50 iterations; with
        ``stop_after``, the point after that many iterations."""
        joint = target.joint
        theta = start.clone().requires_grad_(True)
        lbfgs = optimizer == "lbfgs"
        if lbfgs:
            optim = _lbfgs(theta)
        else:
            optim = torch.optim.Adam([theta], lr=self.lr)
            sched = torch.optim.lr_scheduler.ExponentialLR(optim, lr_gamma(self.lr_decay, self.num_steps))
        first, previous, stalls = len(losses), start, 0

        def objective(t):
            optim.zero_grad()
            try:
                loss = -target(theta, joint.minibatch(t)) / joint.num_points
            except ValueError as err:
                if not invalid_parameters(err):
                    raise
                raise NonFinite("the loss became nan") from None
            check_finite(loss.item())
            loss.backward()
            return loss

        def step(t):
            nonlocal optim, previous, stalls
            if lbfgs:
                previous = theta.detach().clone()
                loss = optim.step(lambda: objective(t)).item()
                if not torch.isfinite(theta).all():
                    raise NonFinite("the parameters became non-finite")
                if early is not None and early.check(theta):
                    raise Converged
                if stop_after is not None and (t + 1) * LBFGS_CHUNK >= stop_after:
                    raise Converged
                if len(losses) > first and abs(losses[-1] - loss) < 1e-7 * max(abs(loss), 1.0):
                    stalls += 1  # no progress: converged, or a line search lost in bad curvature
                    if stalls > 1 or float(theta.grad.abs().max()) < 1e-4:
                        raise Converged
                    optim = _lbfgs(theta)  # forget the history and go on once more
                else:
                    stalls = 0
                return loss
            loss = objective(t)
            previous = theta.detach().clone()  # the point that gave the last finite loss
            optim.step()
            sched.step()
            if early is not None and (t + 1) % LBFGS_CHUNK == 0 and early.check(theta):
                raise Converged
            if stop_after is not None and t + 1 >= stop_after:
                raise Converged
            return loss.item()

        steps = math.ceil(self.num_steps / LBFGS_CHUNK) if lbfgs else self.num_steps
        status = run_steps(steps, step, "laplace MAP", progress, losses=losses)
        kept = previous if status.stopped else theta.detach()
        stopped_early = (early is not None and early.stopped) or stop_after is not None
        if early is not None and early.point is not None:
            kept = early.point
        elif lbfgs and status.complete and stop_after is None:
            kept = _newton(lambda t: -target(t) / joint.num_points, kept, NEWTON_POLISH)[0]
        if lbfgs:  # a Converged signal ends the loop before its last step
            warning = None if not status.complete or status.steps_done < steps else (
                f"laplace: L-BFGS had not converged after {self.num_steps} iterations; raise num_steps")
        else:
            warning = converged(losses[first:], "laplace: the MAP")
        if warning and final and not stopped_early:
            status.warnings.append(warning + "; a Laplace fit around an unconverged MAP is poor")
        return kept, status


@dataclass
class _Target:
    """What the search maximises: the log joint with its Normal priors' precisions scaled by ``alpha``, plus an
    optional term of the whole fit (added once, whatever the minibatch)."""

    joint: LaplaceTerms
    alpha: object
    extra_term: object = None

    def __call__(self, theta, indices=None):
        value = self.joint.log_joint(theta, self.alpha, indices)
        return value if self.extra_term is None else value + self.extra_term(theta)


def _newton(loss_fn, theta, max_steps: int, progress: bool = False, losses: list | None = None):
    """Newton steps on the exact Hessian from ``theta``, damped as Levenberg-Marquardt's (the Hessian plus a
    multiple of its mean diagonal, raised until a step lowers the loss, lowered after each success): the way to
    the mode of a small model that L-BFGS cannot find, an ill-conditioned posterior (an intercept beside
    unscaled predictors, where float32 L-BFGS stalls) or one whose line search strays where the density is not
    finite. The point, the status, and whether it converged (the Newton decrement below float resolution)."""
    state = {"theta": theta.detach(), "loss": _finite(loss_fn, theta), "damping": 0.0, "converged": False}

    def step(t):
        theta, loss = state["theta"], state["loss"]
        point = theta.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(point), point)
        grad, hess = grad.double(), exact_curvature(loss_fn, theta, "full").double()
        unit = torch.eye(len(grad), dtype=hess.dtype, device=hess.device)
        unit *= hess.diagonal().abs().mean().clamp_min(1e-12)
        damping = state["damping"]
        while damping <= 1e8:
            chol, bad = torch.linalg.cholesky_ex(hess + damping * unit)
            if not bad:
                direction = torch.cholesky_solve(grad.unsqueeze(-1), chol).squeeze(-1)
                if damping == 0.0 and float(grad @ direction) / 2 <= 1e-6 * max(abs(loss), 1.0):
                    state["converged"] = True
                    raise Converged
                trial = theta - direction.to(theta.dtype)
                value = _finite(loss_fn, trial)
                if value < loss:
                    state.update(theta=trial.detach(), loss=value, damping=damping / 10 if damping > 1e-6 else 0.0)
                    return value
            damping = max(1e-6, damping * 10)
        raise Converged  # no damping lowers the loss: as far as float resolution goes

    status = run_steps(max_steps, step, "laplace MAP (Newton)", progress, losses=losses)
    return state["theta"], status, state["converged"]


def _finite(loss_fn, theta) -> float:
    """The loss at ``theta`` as a float, infinite where the model is not defined."""
    try:
        with torch.no_grad():  # a model's pyro.param would give the loss a graph
            value = float(loss_fn(theta))
    except ValueError as err:
        if not invalid_parameters(err):
            raise
        return math.inf
    return value if math.isfinite(value) else math.inf


def _lbfgs(theta):
    return torch.optim.LBFGS([theta], lr=1.0, max_iter=LBFGS_CHUNK, history_size=50, line_search_fn="strong_wolfe",
                             tolerance_grad=1e-9, tolerance_change=1e-14)

