"""Laplace approximation: MAP, then a Gaussian at the mode in unconstrained coordinates."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._errors import ZooError
from ._base import FitResult, check_positive, lr_gamma, register_backend
from .curvature import LaplaceTerms, exact_curvature, logdet_path, not_positive
from .linearized import output_site
from .loop import Converged, NonFinite, Status, check_finite, converged, run_steps

HESSIANS = ("full", "diag")
CURVATURES = ("exact", "fisher")
SUBSETS = ("all", "last-layer")
PREDICTIVES = ("nn", "glm")
OPTIMIZERS = ("auto", "lbfgs", "adam")
LBFGS_MAX_DIM = 1000  # auto: L-BFGS on the full data for models up to this many latent coordinates
LBFGS_CHUNK = 50  # L-BFGS iterations per step of the loop (num_steps counts iterations)
# points per block of the Monte Carlo Fisher: its per-point Jacobian takes one backward pass per point through the
# block, so a block of all 7,373 kin8nm points (50 hidden) held 9 GB where blocks of 512 need tens of MB
FISHER_BLOCK = 512


@register_backend
@dataclass
class Laplace:
    """Laplace approximation ``N(theta*, H^-1)`` over the latent sites, unconstrained.

    Parameters
    ----------
    hessian : {"full", "diag"}
        Dense precision matrix, or its diagonal only.
    curvature : {"exact", "fisher"}
        Exact Hessian of the negative log joint, or the Fisher information of the likelihood
        (Monte Carlo over ``fisher_samples`` draws of y, positive semi-definite) plus the exact
        Hessian of the negative log prior. Networks need ``"fisher"``: their exact Hessian at a
        MAP is usually indefinite.
    subset : {"all", "last-layer"}
        Which latents get the Gaussian: all, or the model's output layer (``ZooModel.last_layer``)
        with every other site held at its MAP value, as in laplace-torch's last-layer Laplace.
    tune_prior : bool
        Scale the precision of every Normal prior by the factor that maximises the Laplace
        estimate of the marginal likelihood (post-hoc, as in laplace-torch).
    prior_rounds : int
        With ``tune_prior``, rounds of (MAP under the current prior scale, then re-tune the scale);
        1 is post-hoc tuning, more move the MAP to the evidence-preferred prior.
    optimizer : {"auto", "lbfgs", "adam"}
        How the MAP is found: L-BFGS (strong Wolfe line search, full batch; stops when the loss stops
        changing; then Newton steps on the exact Hessian while they lower the loss), or Adam with an
        exponential schedule (``lr``, ``lr_decay``; minibatches). ``auto``: L-BFGS for models of up to
        1,000 latent coordinates without ``batch_size``, else Adam.
    num_steps, lr, lr_decay : MAP iterations (L-BFGS or Adam steps); Adam's learning rate and schedule.
    batch_size : int, optional
        Minibatches for the MAP and blocks of points for the curvature (default: all points at
        once); needs a model that indexes its data with the indices of ``pyro.plate("data")``.
    memory_limit_gb : float, optional
        Largest dense Hessian allowed; default a quarter of this machine's memory.
    predictive : {"nn", "glm"}
        How predictions use the Gaussian: ``"nn"`` runs the model at each draw of the weights; ``"glm"``
        runs it with the network's output (the site ``f`` or ``logits``) linearised at the MAP, which does
        not underfit as the "nn" predictive of a network does (Immer, Korzepa & Bauer 2021).
    """

    name: ClassVar[str] = "laplace"
    hessian: str = "full"
    curvature: str = "exact"
    subset: str = "all"
    tune_prior: bool = True
    prior_rounds: int = 1
    num_steps: int = 3000
    batch_size: int | None = None
    optimizer: str = "auto"
    lr: float = 1e-2
    lr_decay: float = 0.1
    fisher_samples: int = 4
    memory_limit_gb: float | None = None
    predictive: str = "nn"

    def fit(self, problem) -> FitResult:
        if self.hessian not in HESSIANS:
            raise ZooError(f"laplace: hessian must be one of {HESSIANS}, got {self.hessian!r}")
        if self.curvature not in CURVATURES:
            raise ZooError(f"laplace: curvature must be one of {CURVATURES}, got {self.curvature!r}")
        if self.subset not in SUBSETS:
            raise ZooError(f"laplace: subset must be one of {SUBSETS}, got {self.subset!r}")
        if self.predictive not in PREDICTIVES:
            raise ZooError(f"laplace: predictive must be one of {PREDICTIVES}, got {self.predictive!r}")
        check_positive("laplace: num_steps", self.num_steps)
        check_positive("laplace: fisher_samples", self.fisher_samples)
        check_positive("laplace: prior_rounds", self.prior_rounds)
        if self.batch_size is not None:
            check_positive("laplace: batch_size", self.batch_size)
            if not problem.sites.subsamplable and self.batch_size < problem.args[0].shape[0]:
                # its minibatch would still see every point: the curvature of all of them added once per block
                raise ZooError("laplace: batch_size needs a model whose observations sit in "
                               "`with pyro.plate('data', len(x)) as idx:` and use the indices (x[idx], y[idx]); "
                               "this model does not, so leave batch_size=None")
        joint = LaplaceTerms(problem, self.batch_size)
        if self.predictive == "glm":  # refused now, not after the fit
            output_site(joint.trace(joint.initial))
        sub = joint.latents.coordinates(self._subset_sites(problem, joint.latents.names), joint.initial.device)
        if self.hessian == "full":
            self._check_memory(len(sub))
        theta, alpha, losses, status = joint.initial, 1.0, [], Status()
        for _ in range(self.prior_rounds if self.tune_prior else 1):
            optimizer = self._optimizer(joint)
            kept = len(losses)
            theta_round, round_status = self._map(joint, theta, alpha, problem.progress, losses, optimizer)
            if round_status.stopped and self.optimizer == "auto" and optimizer == "lbfgs":
                # a line search that strays where the model is undefined: Adam's small steps do not
                del losses[kept:]
                theta_round, round_status = self._map(joint, theta, alpha, problem.progress, losses, "adam")
            theta = theta_round
            status.merge(round_status)
            h_data = self._likelihood_curvature(joint, theta, sub) + exact_curvature(
                lambda t: -joint.other_log_prior(joint.embed(theta, sub, t)), theta[sub], self.hessian)
            h_normal = joint.normal_precision[sub]
            alpha, log_evidence = self._prior_scale(joint, theta, sub, h_data, h_normal)
            if not status.complete:
                break
        precision = h_data + alpha * (h_normal if self.hessian == "diag" else torch.diag(h_normal))
        draws = theta.expand(problem.num_samples, -1).clone()
        draws[:, sub] = self._draw(theta[sub], precision, problem.num_samples)
        values, log_det = joint.latents.unpack(draws)
        samples = {k: v.unsqueeze(0) for k, v in values.items()}
        log_q = None  # over every latent, q is a density: log N(u; theta, H^-1) less log |J| (constrained scale)
        if self.subset == "all":
            log_q = _gaussian_log_density(draws - theta, precision, self.hessian) - log_det
        info = dict(hessian=self.hessian, curvature=self.curvature, subset=self.subset, predictive=self.predictive,
                    prior_precision_scale=alpha, log_marginal_likelihood=log_evidence,
                    num_parameters=len(sub), map_loss=losses[-1] if losses else float("nan"))
        params = {"laplace.loc": theta.detach(), "laplace.precision": precision.detach().float()}
        return FitResult(samples, status=status, loss=losses, params=params, info=info, log_q=log_q)

    def _optimizer(self, joint) -> str:
        if self.optimizer not in OPTIMIZERS:
            raise ZooError(f"laplace: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.optimizer != "auto":
            return self.optimizer
        small = joint.latents.dim <= LBFGS_MAX_DIM and joint.batch_size is None
        return "lbfgs" if small else "adam"

    def _subset_sites(self, problem, names) -> list[str]:
        if self.subset == "all":
            return names
        if not problem.last_layer:
            raise ZooError("laplace: subset='last-layer' needs a model that names its output layer "
                           "(ZooModel(last_layer=[...])); this one does not, so use subset='all'")
        return problem.last_layer

    def _check_memory(self, size: int) -> None:
        limit = self.memory_limit_gb
        if limit is None:
            limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**30
        need = 4 * size * size * 8 / 2**30  # four dense float64 matrices at the peak
        if need > limit:
            raise ZooError(f"laplace: a full Hessian over {size:,} parameters needs about {need:.1f} GiB, "
                           f"more than the {limit:.1f} GiB allowed; use hessian='diag' or "
                           "subset='last-layer' (or raise memory_limit_gb)")

    def _map(self, joint: LaplaceTerms, start, alpha: float, progress: bool, losses: list, optimizer: str):
        """The MAP of the log joint from ``start`` (L-BFGS or Adam); the last finite point and the status."""
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
                loss = -joint.log_joint(theta, alpha, joint.minibatch(t)) / joint.num_points
            except ValueError as err:  # a distribution built from non-finite parameters
                if "invalid values" not in str(err):
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
            return loss.item()

        steps = math.ceil(self.num_steps / LBFGS_CHUNK) if lbfgs else self.num_steps
        status = run_steps(steps, step, "laplace MAP", progress, losses=losses)
        kept = previous if status.stopped else theta.detach()
        if lbfgs and status.complete:
            kept = _newton_polish(lambda t: -joint.log_joint(t, alpha) / joint.num_points, kept)
        if lbfgs:  # a Converged signal ends the loop before its last step
            warning = None if not status.complete or status.steps_done < steps else (
                f"laplace: L-BFGS had not converged after {self.num_steps} iterations; raise num_steps")
        else:
            warning = converged(losses[first:], "laplace: the MAP")
        if warning:
            status.warnings.append(warning + "; a Laplace fit around an unconverged MAP is poor")
        return kept, status

    def _likelihood_curvature(self, joint, theta, sub):
        size = len(sub)
        # in float64: with a large noise precision (naval) float32 sums of outer products lost positive
        # definiteness (56 eigenvalues not positive)
        total = torch.zeros((size, size) if self.hessian == "full" else size, device=theta.device, dtype=torch.float64)
        rows = 2**25 // max(size, 1)  # a block's Jacobian (rows x size) stays within 128 MiB
        if self.curvature == "fisher":  # and each row's backward pass runs through the whole block: B^2 work
            rows = min(rows, FISHER_BLOCK)
        for idx in joint.blocks(rows):
            if self.curvature == "exact":
                total += exact_curvature(lambda t, i=idx: -joint.pointwise(joint.embed(theta, sub, t), i).sum(),
                                         theta[sub], self.hessian)
                continue
            for _ in range(self.fisher_samples):
                y_sim = joint.simulate(theta, idx)
                jac = torch.func.jacrev(
                    lambda t, i=idx, ys=y_sim: joint.pointwise(joint.embed(theta, sub, t), i, ys))(theta[sub])
                jac = jac.double()
                total += (jac.T @ jac if self.hessian == "full" else (jac ** 2).sum(0)) / self.fisher_samples
        return total

    def _prior_scale(self, joint, theta, sub, h_data, h_normal):
        """The prior-precision factor alpha maximising the Laplace evidence, and that evidence."""
        with torch.no_grad():
            fixed = joint.total_log_likelihood(theta) + joint.other_log_prior(theta).item()
        fixed += 0.5 * len(sub) * math.log(2 * math.pi)
        logdet = logdet_path(h_data.double(), h_normal.double(), self.hessian)
        mask = joint.is_normal & torch.zeros_like(joint.is_normal).index_fill(0, sub, True)

        def log_evidence(alpha):
            value = logdet(alpha)
            if value is None:
                return -math.inf
            return fixed + joint.normal_log_prior(theta, alpha, mask).item() - 0.5 * value

        grid = [10 ** (k / 10) for k in range(-30, 31)] if self.tune_prior and bool((h_normal > 0).any()) else [1.0]
        alpha = max(grid, key=log_evidence)
        return alpha, log_evidence(alpha)

    def _draw(self, theta, precision, num_samples):
        eps = torch.randn(num_samples, theta.numel(), dtype=torch.float64, device=theta.device)
        if self.hessian == "diag":
            if (precision <= 0).any():
                raise not_positive(int((precision <= 0).sum()), self.curvature)
            return (theta + eps / precision.double().sqrt()).float()
        chol, bad = torch.linalg.cholesky_ex(precision.double())
        if bad:
            negative = int((torch.linalg.eigvalsh(precision.double()) <= 0).sum())
            raise not_positive(negative, self.curvature)
        # theta + L^-T eps has covariance (L L^T)^-1 = precision^-1
        offsets = torch.linalg.solve_triangular(chol.T, eps.T, upper=True).T
        return (theta + offsets).float()




def _newton_polish(loss_fn, theta, max_steps: int = 20):
    """Newton steps from ``theta`` while they lower the loss: float32 L-BFGS can stall short of the mode of
    an ill-conditioned posterior (an intercept beside unscaled predictors), where the exact Hessian of a
    small model still points the way. Stops at a Hessian that is not positive definite."""
    loss = float(loss_fn(theta))
    for _ in range(max_steps):
        t = theta.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(t), t)
        if float(grad.abs().max()) < 1e-7:
            break
        chol, bad = torch.linalg.cholesky_ex(exact_curvature(loss_fn, theta, "full").double())
        if bad:
            break
        step = torch.cholesky_solve(grad.double().unsqueeze(-1), chol).squeeze(-1).to(theta.dtype)
        for scale in (1.0, 0.5, 0.25, 0.125):
            trial = theta - scale * step
            value = float(loss_fn(trial))
            if value < loss:
                break
        else:
            break
        theta, loss = trial.detach(), value
    return theta


def _lbfgs(theta):
    return torch.optim.LBFGS([theta], lr=1.0, max_iter=LBFGS_CHUNK, history_size=50, line_search_fn="strong_wolfe",
                             tolerance_grad=1e-9, tolerance_change=1e-14)


def _gaussian_log_density(offsets, precision, structure) -> torch.Tensor:
    """log N(offsets; 0, precision^-1) per row (float64 inside)."""
    offsets, precision = offsets.double(), precision.double()
    if structure == "diag":
        quad, logdet = (offsets**2 * precision).sum(-1), precision.log().sum()
    else:
        quad, logdet = ((offsets @ precision) * offsets).sum(-1), torch.linalg.slogdet(precision)[1]
    return (0.5 * (logdet - quad - offsets.shape[-1] * math.log(2 * math.pi))).float()
