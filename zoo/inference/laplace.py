"""Laplace approximation: MAP, then a Gaussian at the mode in unconstrained coordinates."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import ClassVar

import torch

from .._errors import ZooError
from ._base import FitResult, check_positive, lr_gamma, register_backend
from .curvature import LaplaceTerms, exact_curvature, not_positive
from .linearized import output_site
from .loop import Converged, NonFinite, Status, check_finite, converged, run_steps
from .structures import HESSIANS, build_precision, check_memory

CURVATURES = ("exact", "fisher")
SUBSETS = ("all", "last-layer")
PREDICTIVES = ("nn", "glm")
GLM_APPROXIMATIONS = ("mc", "closed")
CLOSED_FORM_MAX = 5000  # glm_approx="closed" keeps a dense square root of the covariance
OPTIMIZERS = ("auto", "lbfgs", "adam")
LBFGS_MAX_DIM = 1000  # auto: L-BFGS on the full data for models up to this many latent coordinates
LBFGS_CHUNK = 50  # L-BFGS iterations per step of the loop (num_steps counts iterations)
PRIOR_GRID = [10 ** (k / 10) for k in range(-30, 31)]  # prior-precision factors the evidence chooses from
MACKAY_ITERATIONS = 50


@register_backend
@dataclass
class Laplace:
    """Laplace approximation ``N(theta*, H^-1)`` over the latent sites, unconstrained.

    Parameters
    ----------
    hessian : {"full", "diag", "kron", "lowrank"}
        Dense precision matrix; its diagonal; KFAC (``"kron"``: a Kronecker-factored block for every weight
        used as a layer, ``x @ W``, ``F.linear`` or ``F.conv2d``, found as the model runs; a dense or diagonal
        block over the other latents); or the top ``rank`` eigenpairs of the data's curvature plus the diagonal
        they leave out and the prior (``"lowrank"``).
    curvature : {"exact", "fisher"}, optional
        Exact Hessian of the negative log joint, or the Fisher information of the likelihood
        (Monte Carlo over ``fisher_samples`` draws of y, positive semi-definite) plus the exact
        Hessian of the negative log prior. Networks need ``"fisher"``: their exact Hessian at a
        MAP is usually indefinite. Default: exact for full and diag; kron and lowrank take the Fisher only.
    rank : int
        ``"lowrank"``: eigenpairs kept (a randomised Nystrom sketch, one pass over the data).
    subset : {"all", "last-layer"}
        Which latents get the Gaussian: all, or the model's output layer (``ZooModel.last_layer``)
        with every other site held at its MAP value, as in laplace-torch's last-layer Laplace.
    tune_prior : bool
        Scale the precision of every Normal prior by the factor that maximises the Laplace
        estimate of the marginal likelihood (post-hoc, as in laplace-torch).
    prior_per_site : bool
        With ``tune_prior``, one factor per latent site (per layer of a network) instead of one for all: from
        the best common factor, MacKay's (1992) fixed-point updates of the evidence.
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
        Most memory the structure may take; default a quarter of this machine's. A structure that would need
        more is refused before anything is allocated, with the structures that fit.
    predictive : {"nn", "glm"}
        How predictions use the Gaussian: ``"nn"`` runs the model at each draw of the weights; ``"glm"``
        runs it with the network's output (the site ``f`` or ``logits``) linearised at the MAP, which does
        not underfit as the "nn" predictive of a network does (Immer, Korzepa & Bauer 2021).
    glm_approx : {"mc", "closed"}
        How the linearised predictive meets the likelihood: averaged over Gaussian draws (``"mc"``), or in
        closed form from the output's exact mean and variance ``diag(J Sigma J^T)``: ``Normal(f*, sigma^2 +
        var)`` for regression, the probit approximation for a softmax (``"closed"``; up to 5,000 parameters,
        whose covariance root it keeps).
    at : Posterior, optional
        Post-hoc Laplace: put the Gaussian at this fit's point (the mean of its draws; a MAP fit of the same
        model, such as a network's deterministic twin trained with svi) instead of searching for a MAP. The
        prior precision is tuned once there.
    """

    name: ClassVar[str] = "laplace"
    hessian: str = "full"
    curvature: str | None = None
    subset: str = "all"
    tune_prior: bool = True
    prior_per_site: bool = False
    prior_rounds: int = 1
    num_steps: int = 3000
    batch_size: int | None = None
    optimizer: str = "auto"
    lr: float = 1e-2
    lr_decay: float = 0.1
    fisher_samples: int = 4
    rank: int = 100
    memory_limit_gb: float | None = None
    predictive: str = "nn"
    glm_approx: str = "mc"
    at: object = None

    def fit(self, problem) -> FitResult:
        curvature = self._check_options(problem)
        joint = LaplaceTerms(problem, self.batch_size)
        if self.predictive == "glm":  # refused now, not after the fit
            output_site(joint.trace(joint.initial))
        names = self._subset_sites(problem, joint.latents.names)
        sub = joint.latents.coordinates(names, joint.initial.device)
        check_memory(self.hessian, {n: joint.latents.free_shapes[n] for n in names}, self.rank, self._memory_limit())
        if self.closed_form and len(sub) > CLOSED_FORM_MAX:
            raise ZooError(f"laplace: glm_approx='closed' keeps a dense root of the covariance over {len(sub):,} "
                           f"parameters (at most {CLOSED_FORM_MAX:,}); use glm_approx='mc' or subset='last-layer'")
        theta, alpha, losses, status = joint.initial, 1.0, [], Status()
        if self.at is not None:
            theta = self._point_of(self.at, joint)
        for _ in range(self.prior_rounds if self.tune_prior and self.at is None else 1):
            if self.at is None:
                theta = self._map_round(joint, theta, alpha, problem.progress, losses, status)
            precision = build_precision(joint, theta, sub, self.hessian, curvature, self.fisher_samples, self.rank)
            alpha_sub, log_evidence = self._tune_prior(joint, theta, sub, names, precision)
            alpha = torch.ones(joint.latents.dim, dtype=torch.float64, device=theta.device)
            alpha[sub] = alpha_sub
            if not status.complete:
                break
        if precision.logdet(alpha_sub) is None:
            raise not_positive(precision.not_positive(alpha_sub), curvature)
        offsets = precision.sample(problem.num_samples, alpha_sub)
        draws = theta.expand(problem.num_samples, -1).clone()
        draws[:, sub] = (theta[sub] + offsets).float()
        values, log_det = joint.latents.unpack(draws)
        samples = {k: v.unsqueeze(0) for k, v in values.items()}
        log_q = None  # over every latent, q is a density: log N(u; theta, H^-1) less log |J| (constrained scale)
        if self.subset == "all":
            log_q = precision.log_density((draws[:, sub] - theta[sub]).double(), alpha_sub).float() - log_det
        info = dict(hessian=self.hessian, curvature=curvature, subset=self.subset, predictive=self.predictive,
                    glm_approx=self.glm_approx,
                    prior_precision_scale=self._scales(joint, names, alpha), log_marginal_likelihood=log_evidence,
                    num_parameters=len(sub), map_loss=losses[-1] if losses else float("nan"))
        params = {"laplace.loc": theta.detach(),
                  **{f"laplace.{k}": v.detach() for k, v in precision.state(alpha_sub).items()}}
        if self.closed_form:
            params.update({"laplace.root": precision.root(alpha_sub).float(), "laplace.coordinates": sub})
        return FitResult(samples, status=status, loss=losses, params=params, info=info, log_q=log_q)

    def _check_options(self, problem) -> str:
        """The options checked; the curvature to use."""
        for option, value, allowed in (("hessian", self.hessian, HESSIANS), ("subset", self.subset, SUBSETS),
                                       ("predictive", self.predictive, PREDICTIVES),
                                       ("glm_approx", self.glm_approx, GLM_APPROXIMATIONS),
                                       ("curvature", self.curvature, (None, *CURVATURES))):
            if value not in allowed:
                raise ZooError(f"laplace: {option} must be one of {allowed}, got {value!r}")
        approximate = self.hessian in ("kron", "lowrank")
        if approximate and self.curvature == "exact":
            raise ZooError(f"laplace: hessian={self.hessian!r} approximates the Fisher information, not the exact "
                           "Hessian; leave curvature unset (or 'fisher'), or use hessian='full' or 'diag'")
        for option in ("num_steps", "fisher_samples", "prior_rounds", "rank"):
            check_positive(f"laplace: {option}", getattr(self, option))
        if self.batch_size is not None:
            check_positive("laplace: batch_size", self.batch_size)
            if not problem.sites.subsamplable and self.batch_size < problem.args[0].shape[0]:
                # its minibatch would still see every point: the curvature of all of them added once per block
                raise ZooError("laplace: batch_size needs a model whose observations sit in "
                               "`with pyro.plate('data', len(x)) as idx:` and use the indices (x[idx], y[idx]); "
                               "this model does not, so leave batch_size=None")
        return self.curvature or ("fisher" if approximate else "exact")

    @property
    def closed_form(self) -> bool:
        return self.predictive == "glm" and self.glm_approx == "closed"

    def _map_round(self, joint, theta, alpha, progress, losses, status):
        optimizer = self._optimizer(joint)
        kept = len(losses)
        found, round_status = self._map(joint, theta, alpha, progress, losses, optimizer)
        if round_status.stopped and self.optimizer == "auto" and optimizer == "lbfgs":
            # a line search that strays where the model is undefined: Adam's small steps do not
            del losses[kept:]
            found, round_status = self._map(joint, theta, alpha, progress, losses, "adam")
        status.merge(round_status)
        return found

    @staticmethod
    def _point_of(posterior, joint) -> torch.Tensor:
        """The flat unconstrained point of another fit of the same model: a Laplace fit's mean, else the mean of
        its draws (a point mass's one value)."""
        params = getattr(posterior, "params", {})
        if "laplace.loc" in params and params["laplace.loc"].shape == joint.initial.shape:
            return params["laplace.loc"].to(joint.initial).clone()
        draws = getattr(posterior, "samples", None)
        missing = [n for n in joint.latents.names if draws is None or n not in draws]
        if missing:
            raise ZooError(f"laplace: at= takes a Posterior of a model with the same latent sites; {missing} are "
                           "not among its draws")
        point = {n: draws[n].reshape(-1, *draws[n].shape[2:]).mean(0) for n in joint.latents.names}
        for n, value in point.items():
            if tuple(value.shape) != joint.latents.shapes[n]:
                raise ZooError(f"laplace: at=: site {n!r} has shape {tuple(value.shape)} there and "
                               f"{joint.latents.shapes[n]} in this model")
        return joint.latents.pack({n: v.to(joint.initial) for n, v in point.items()}).detach()

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

    def _memory_limit(self) -> float:
        if self.memory_limit_gb is not None:
            return self.memory_limit_gb
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2**30

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

    def _tune_prior(self, joint, theta, sub, names, precision):
        """The prior-precision factors (per coordinate of ``sub``) that maximise the Laplace evidence, and that
        evidence: one factor for all from a grid, then with ``prior_per_site`` one per site by MacKay's updates
        ``alpha_k = gamma_k / |theta_k|^2_d``, ``gamma_k = n_k - alpha_k tr(Sigma_k d)``, kept if the evidence
        rose."""
        with torch.no_grad():
            fixed = joint.total_log_likelihood(theta) + joint.other_log_prior(theta).item()
        fixed += 0.5 * len(sub) * math.log(2 * math.pi)
        d = joint.normal_precision[sub].double()
        squares = d * (theta[sub] - joint.prior_loc[sub]).double() ** 2
        normal = d > 0

        def log_evidence(alpha):
            logdet = precision.logdet(alpha)
            if logdet is None:
                return -math.inf
            log_prior = 0.5 * ((alpha * d / (2 * math.pi)).log() - alpha * squares)[normal].sum()
            return fixed + float(log_prior) - 0.5 * logdet

        ones = torch.ones_like(d)
        tune = self.tune_prior and bool(normal.any())
        alpha = ones * max(PRIOR_GRID if tune else [1.0], key=lambda a: log_evidence(a * ones))
        best = log_evidence(alpha)
        if tune and self.prior_per_site and math.isfinite(best):  # (not positive definite: refused after)
            groups = _tie(self._site_positions(joint, names, sub), getattr(precision, "tied", []))
            groups = [g for g in groups if bool(normal[g].all())]
            trial = alpha.clone()
            for _ in range(MACKAY_ITERATIONS):
                variances = precision.variances(trial)
                previous = trial.clone()
                for g in groups:
                    gamma = len(g) - float((trial[g] * d[g] * variances[g]).sum())
                    trial[g] = min(max(gamma, 1e-8) / max(float(squares[g].sum()), 1e-12), PRIOR_GRID[-1] * 1e3)
                if float(((trial - previous).abs() / previous).max()) < 1e-4:
                    break
            if log_evidence(trial) > best:
                alpha, best = trial, log_evidence(trial)
        return alpha, best

    @staticmethod
    def _site_positions(joint, names, sub) -> list[torch.Tensor]:
        """Each site's coordinates as positions in ``sub`` (sites in the subset's order)."""
        out, start = [], 0
        for n in names:
            a, b = joint.latents.spans[n]
            out.append(torch.arange(start, start + b - a, device=sub.device))
            start += b - a
        return out

    @staticmethod
    def _scales(joint, names, alpha) -> float | dict[str, float]:
        """The prior-precision factor: one number, or one per site where they differ."""
        per_site = {n: float(alpha[joint.latents.spans[n][0]]) for n in names
                    if bool(joint.is_normal[slice(*joint.latents.spans[n])].any())}
        values = set(per_site.values())
        return values.pop() if len(values) == 1 else (per_site or 1.0)


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


def _tie(groups: list[torch.Tensor], tied: list[torch.Tensor]) -> list[torch.Tensor]:
    """``groups`` (disjoint positions covering the subset) merged wherever one of ``tied`` spans several."""
    label = torch.cat([torch.full((len(g),), k) for k, g in enumerate(groups)])[torch.cat(groups).argsort().cpu()]
    for block in tied:
        present = label[block.cpu()].unique()
        label[torch.isin(label, present)] = int(present.min())
    return [(label == k).nonzero().squeeze(-1).to(groups[0].device) for k in label.unique().tolist()]
