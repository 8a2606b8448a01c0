"""Laplace approximation: MAP, then a Gaussian at the mode in unconstrained coordinates."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import ClassVar

import pyro.distributions as dist
import torch

from .._errors import ZooError
from ._base import FitResult, check_positive, register_backend
from .curvature import LaplaceTerms, not_positive
from .linearized import LinearizedRunner, output_site
from .loop import Status
from .mode_search import ModeSearch
from .prior_tuning import VALIDATION_DRAWS, Evidence, by_validation, tie
from .structures import HESSIANS, build_precision, check_memory
from .validation import Validation, joined

CURVATURES = ("exact", "fisher", "ggn")
SUBSETS = ("all", "last-layer")
PREDICTIVES = ("nn", "glm")
GLM_APPROXIMATIONS = ("mc", "closed")
CLOSED_FORM_MAX = 5000  # glm_approx="closed" keeps a dense square root of the covariance
TUNINGS = (True, "evidence", "validation", False)


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
    curvature : {"exact", "fisher", "ggn"}, optional
        Exact Hessian of the negative log joint, or the Fisher information of the likelihood
        (Monte Carlo over ``fisher_samples`` draws of y, positive semi-definite) plus the exact
        Hessian of the negative log prior, or that Fisher's exact value, the generalised Gauss-Newton matrix
        ``sum J^T F J`` (Normal, Bernoulli and Categorical likelihoods; full, diag and lowrank). Networks need
        ``"fisher"`` or ``"ggn"``: their exact Hessian at a MAP is usually indefinite. Default: exact for full and
        diag; kron and lowrank take the Monte Carlo Fisher.
    rank : int
        ``"lowrank"``: eigenpairs kept (a randomised Nystrom sketch, one pass over the data).
    subset : {"all", "last-layer"}
        Which latents get the Gaussian: all, or the model's output layer (``ZooModel.last_layer``)
        with every other site held at its MAP value, as in laplace-torch's last-layer Laplace.
    tune_prior : {True, "evidence", "validation", False}
        Scale the precision of every Normal prior by the factor that maximises the Laplace estimate of the
        marginal likelihood (``True`` or ``"evidence"``, post-hoc, as in laplace-torch); ``"validation"``: then
        by a further factor, from a grid of 1e-3 to 1e3, that maximises the log predictive density of the
        held-out data (``zoo.fit(..., validation=)``) under this fit's predictive, as laplace-torch's
        ``gridsearch``. The evidence of a network's MAP can prefer a prior that predicts badly.
    prior_per_site : bool
        With ``tune_prior``, one factor per latent site (per layer of a network) instead of one for all: from
        the best common factor, MacKay's (1992) fixed-point updates of the evidence.
    prior_rounds : int
        With ``tune_prior``, rounds of (MAP under the current prior scale, then re-tune the scale);
        1 is post-hoc tuning, more move the MAP to the evidence-preferred prior.
    noise : str, optional
        The latent site that sets a Gaussian likelihood's noise, one number shared by every observation: its
        precision beta (bnn's ``"precision"``), standard deviation or variance, told apart by how the likelihood
        uses it. From the second round on, the MAP takes the noise where the evidence peaks instead of where the
        joint does, by adding the evidence's ``-gamma/2 log beta`` (gamma: the number of well-determined
        parameters, of the last round's curvature): MacKay's (1992) ``beta = (N - gamma) / RSS``. The joint's
        own mode puts the noise at a network's training residuals, which overfit them.
    optimizer : {"auto", "lbfgs", "adam"}
        How the MAP is found: L-BFGS (strong Wolfe line search, full batch; stops when the loss stops
        changing; then Newton steps on the exact Hessian while they lower the loss), or Adam with an
        exponential schedule (``lr``, ``lr_decay``; minibatches). ``auto``: L-BFGS for models of up to
        1,000 latent coordinates without ``batch_size``, else Adam; where L-BFGS's line search strays where the
        density is not finite (wide priors on unscaled data), damped Newton steps from its last finite point,
        and Adam from the start if those do not converge.
    patience : int, optional
        With held-out data (``zoo.fit(..., validation=)``): stop the MAP early, keeping the point with the best
        held-out log-likelihood, once ``patience`` checks in a row (one per 50 iterations) have not improved it.
    refit : bool
        With ``patience``: then fit again on the training and held-out points together, each round's MAP
        stopped after the iterations the early stop found (and the prior factor ``tune_prior="validation"``
        found applied again): the held-out points choose the length of training, then train.
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
    takes_validation: ClassVar[bool] = True
    hessian: str = "full"
    curvature: str | None = None
    subset: str = "all"
    tune_prior: bool | str = True
    prior_per_site: bool = False
    prior_rounds: int = 1
    noise: str | None = None
    patience: int | None = None
    refit: bool = False
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
        noise_power = self._noise_power(joint)
        names = self._subset_sites(problem, joint.latents.names)
        sub = joint.latents.coordinates(names, joint.initial.device)
        check_memory(self.hessian, {n: joint.latents.free_shapes[n] for n in names}, self.rank, self._memory_limit())
        if self.closed_form and len(sub) > CLOSED_FORM_MAX:
            raise ZooError(f"laplace: glm_approx='closed' keeps a dense root of the covariance over {len(sub):,} "
                           f"parameters (at most {CLOSED_FORM_MAX:,}); use glm_approx='mc' or subset='last-layer'")
        validation = Validation(problem.model, problem.sites, problem.path, problem.validation) \
            if problem.validation is not None else None
        losses, status, info = [], Status(), {}
        search = ModeSearch(self.optimizer, self.num_steps, self.lr, self.lr_decay, self.patience)
        theta, alpha_sub, precision, evidence = self._rounds(joint, sub, names, curvature, search, noise_power,
                                                             validation, losses, status)
        factor = 1.0
        if self.tune_prior == "validation":
            draws = min(VALIDATION_DRAWS, problem.num_samples)
            factor, info["validation_log_density"] = by_validation(
                lambda a: self._held_out(validation, joint, theta, sub, precision, a, draws), alpha_sub)
        if self.refit and status.complete:  # the held-out points join the data; each MAP stops where it did
            joint = LaplaceTerms(dataclasses.replace(problem, args=joined(problem.args, problem.validation),
                                                     validation=None, _flat=None), self.batch_size)
            search = ModeSearch(self.optimizer, self.num_steps, self.lr, self.lr_decay, stop_after=search.lengths)
            theta, alpha_sub, precision, evidence = self._rounds(joint, sub, names, curvature, search, noise_power,
                                                                 None, losses, status)
        alpha_sub = alpha_sub * factor
        alpha = torch.ones(joint.latents.dim, dtype=torch.float64, device=theta.device)
        alpha[sub] = alpha_sub
        if precision.logdet(alpha_sub) is None:
            raise not_positive(precision.not_positive(alpha_sub), curvature)
        draws, samples, log_det = self._draws(joint, theta, sub, precision, alpha_sub, problem.num_samples)
        log_q = None  # over every latent, q is a density: log N(u; theta, H^-1) less log |J| (constrained scale)
        if self.subset == "all":
            log_q = precision.log_density((draws[:, sub] - theta[sub]).double(), alpha_sub).float() - log_det
        info.update(hessian=self.hessian, curvature=curvature, subset=self.subset, predictive=self.predictive,
                    glm_approx=self.glm_approx, prior_precision_scale=self._scales(joint, names, alpha),
                    log_marginal_likelihood=evidence(alpha_sub), num_parameters=len(sub),
                    map_loss=losses[-1] if losses else float("nan"))
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
        if self.tune_prior not in TUNINGS:
            raise ZooError(f"laplace: tune_prior must be one of {TUNINGS}, got {self.tune_prior!r}")
        if self.refit and self.patience is None:
            raise ZooError("laplace: refit=True refits for the length the early stop found; set patience too")
        if self.at is not None and self.patience is not None:
            raise ZooError("laplace: at= puts the Gaussian at another fit's point, so there is no MAP search to "
                           "stop early; leave patience and refit out")
        if problem.validation is None and (self.tune_prior == "validation" or self.patience is not None):
            option = "tune_prior='validation'" if self.tune_prior == "validation" else "patience"
            raise ZooError(f"laplace: {option} needs held-out data: zoo.fit(..., validation=(x_val, y_val)), or "
                           "validation=0.1 to hold out a tenth of the training points")
        approximate = self.hessian in ("kron", "lowrank")
        if approximate and self.curvature == "exact" or self.hessian == "kron" and self.curvature == "ggn":
            raise ZooError(f"laplace: hessian={self.hessian!r} approximates the Monte Carlo Fisher"
                           f"{' (or the GGN)' if self.hessian == 'lowrank' else ''}, not curvature="
                           f"{self.curvature!r}; leave curvature unset, or use hessian='full' or 'diag'")
        for option in ("num_steps", "fisher_samples", "prior_rounds", "rank"):
            check_positive(f"laplace: {option}", getattr(self, option))
        if self.patience is not None:
            check_positive("laplace: patience", self.patience)
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

    def _rounds(self, joint, sub, names, curvature, search, noise_power, validation, losses, status):
        """Rounds of (the MAP under the current prior, the curvature there, the evidence's prior): the mode, the
        prior factors over ``sub``, the precision and the evidence of the last."""
        theta, alpha, evidence_term = joint.initial, 1.0, None
        if noise_power is not None:  # gamma counts what the noise is fitted beside
            start, end = joint.latents.spans[self.noise]
            beside_noise = (sub < start) | (sub >= end)
        if self.at is not None:
            theta = self._point_of(self.at, joint)
        rounds = self.prior_rounds if self.tune_prior and self.at is None else 1
        for r in range(rounds):
            if self.at is None:
                theta = search.run(joint, theta, alpha, joint.problem.progress, losses, status, validation,
                                   evidence_term, final=r == rounds - 1)
            precision = build_precision(joint, theta, sub, self.hessian, curvature, self.fisher_samples, self.rank)
            evidence = Evidence(joint, theta, sub, precision)
            alpha_sub = self._by_evidence(evidence, joint, names, sub, precision)
            alpha = torch.ones(joint.latents.dim, dtype=torch.float64, device=theta.device)
            alpha[sub] = alpha_sub
            if noise_power is not None and precision.logdet(alpha_sub) is not None:  # else refused after the rounds
                gamma = evidence.well_determined(alpha_sub, beside_noise)
                evidence_term = self._noise_term(joint, gamma, noise_power)
            if not status.complete:
                break
        return theta, alpha_sub, precision, evidence

    def _noise_power(self, joint) -> float | None:
        """How a Normal likelihood's scale follows the ``noise`` site, ``scale = value ** power``: -1/2 for a
        precision, 1/2 for a variance, 1 for a standard deviation (read off the model with the site at 2)."""
        site, latents = self.noise, joint.latents
        if site is None:
            return None
        if site in latents.names and latents.shapes[site] in ((), (1,)):
            values = latents.constrain(joint.initial)
            values[site] = torch.full_like(values[site], 2.0)
            trace = joint.trace_at(values, joint.one_point)  # one point shows the scale
            for name in joint.sites.observed:
                fn = trace.nodes[name]["fn"]
                while isinstance(fn, dist.Independent):
                    fn = fn.base_dist
                if type(fn) is not dist.Normal:
                    continue
                for power in (-0.5, 0.5, 1.0):
                    if torch.allclose(fn.scale, torch.full_like(fn.scale, 2.0**power), rtol=1e-5):
                        return power
        raise ZooError(f"laplace: noise={site!r} must name a latent site, one number, that is the precision, "
                       f"standard deviation or variance of a Normal likelihood; the model's latents: "
                       f"{latents.names}. Leave it out for a model without one")

    def _noise_term(self, joint, gamma: float, power: float):
        """``theta -> -gamma/2 log beta``, beta = value ** (-2 power) the noise precision at ``theta``."""
        start, end = joint.latents.spans[self.noise]
        transform = joint.latents.transforms[self.noise]
        return lambda theta: gamma * power * transform(theta[..., start:end]).log().sum(-1)

    def _by_evidence(self, evidence, joint, names, sub, precision) -> torch.Tensor:
        """The prior-precision factors (per coordinate of ``sub``) the evidence prefers (ones: not tuned)."""
        if not self.tune_prior:
            return torch.ones_like(evidence.d)
        groups = None
        if self.prior_per_site:
            groups = tie(self._site_positions(joint, names, sub), getattr(precision, "tied", []))
        return evidence.best(groups)

    def _draws(self, joint, theta, sub, precision, alpha_sub, num):
        """``num`` flat draws of the Gaussian, the same as site -> (1, num, ...), and log |J| of each."""
        draws = theta.expand(num, -1).clone()
        draws[:, sub] = (theta[sub] + precision.sample(num, alpha_sub)).float()
        values, log_det = joint.latents.unpack(draws)
        return draws, {k: v.unsqueeze(0) for k, v in values.items()}, log_det

    def _held_out(self, validation, joint, theta, sub, precision, alpha_sub, num: int) -> float:
        """The held-out log predictive density under this fit's predictive at prior factors ``alpha_sub``, over
        ``num`` draws (the same random numbers for every ``alpha_sub``, so that the grid compares like with like)."""
        if precision.logdet(alpha_sub) is None:
            return -math.inf
        with torch.random.fork_rng(devices=[theta.device] if theta.is_cuda else []):
            torch.manual_seed(0)
            _, samples, _ = self._draws(joint, theta, sub, precision, alpha_sub, num)
        runner = None
        if self.predictive == "glm":
            root = precision.root(alpha_sub).float() if self.closed_form else None
            runner = LinearizedRunner(validation.model, validation.sites, validation.runner.path, theta, root, sub)
        return validation.log_density({k: v[0] for k, v in samples.items()}, runner)

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

