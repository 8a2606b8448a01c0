"""Where svi's autoguide starts (its ``init``): the model's initial point, or the Laplace approximation at the
MAP, its mode as the guide's location and its curvature as the guide's scales.

From the prior's median, 2,000 Adam steps do not reach the posterior of a model with unscaled data (Pyro's
tutorial regression on kidiq: a slope of -5.4 where Stan finds 0.61). From the MAP with the Laplace scales a
mean-field or full-rank guide starts at the optimum it would have for a Gaussian posterior, and its steps
refine that. A network's MAP overfits (bnn on boston: test LL -170 from the MAP against -2.3 from the prior),
so ``"auto"`` starts only a model with no output layer there. The curvature's scales are used only where the
Laplace approximation passes its own PSIS check (k-hat at most 0.7): a hierarchical model's mode can lie far
from its posterior's mass, and a guide as wide as the curvature there stays far off; with the guide's own
small scales at the mode it does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import pyro
import pyro.infer.autoguide as ag
import torch

from .._errors import ZooError
from .curvature import LaplaceTerms, exact_curvature
from .diagnostics import K_HAT_BAD
from .flat import FlatLatents
from .loop import Status
from .mode_search import LBFGS_MAX_DIM, ModeSearch

INITS = ("auto", "prior", "map")
# the scale parameters of a guide started at a Laplace approximation that passed its check step at this fraction of
# Adam's: posteriordb full-rank svi, worst sd error with svi's defaults 0.19 at 1 (arK 0.17, nes 0.15, earnings
# 0.09), 0.05 at 0.3 and at 0.1 (with 5,000 steps at lr 2e-2: 0.42, 0.11, 0.05)
COVARIANCE_STEP = 0.3
# guides whose location and scales a Laplace start sets (a low-rank guide gets its location only)
STARTABLE = (ag.AutoNormal, ag.AutoMultivariateNormal, ag.AutoDiagonalNormal, ag.AutoLowRankMultivariateNormal,
             ag.AutoDelta)


@dataclass
class LaplaceStart:
    """The MAP (unconstrained, flat) and the precision of the Laplace approximation there, the Hessian of
    -log p (None where it is not positive definite or the model too big for it)."""

    latents: FlatLatents
    theta: torch.Tensor
    precision: torch.Tensor | None

    def pareto_k(self, problem, draws: int = 1000) -> float:
        """PSIS k-hat of the Laplace approximation (Yao et al. 2018): whether its scales are worth starting
        from. Non-centred eight schools: tau 29 at the mode in the unconstrained coordinates, 3.5 on average,
        k-hat 1.0; a full-rank guide started with the curvature's covariance ended at tau 15 +- 12, with small
        scales at the mode at 3.8 +- 2.4 (NUTS: 3.5 +- 3.3)."""
        from .arviz import pareto_k  # here: importing ArviZ takes seconds that a start without the check skips

        _, density, _ = problem.flat()
        q = torch.distributions.MultivariateNormal(self.theta.double(), precision_matrix=self.precision)
        generator = torch.Generator(self.theta.device).manual_seed(0)  # not the fit's stream
        normal = torch.randn(draws, len(self.theta), generator=generator, dtype=q.loc.dtype, device=q.loc.device)
        theta = (q.loc + normal @ q.scale_tril.T).to(self.theta.dtype)  # q's density at the points p sees
        with torch.no_grad(), pyro.validation_enabled(False):
            log_p = torch.cat([density(block) for block in theta.split(256)])  # memory as diagnose's check
            log_ratio = log_p.double() - q.log_prob(theta.double())
        finite = log_ratio[torch.isfinite(log_ratio)]
        return pareto_k(finite.cpu().numpy())[0] if len(finite) > draws // 2 else math.inf

    def apply(self, guide) -> dict[torch.Tensor, torch.Tensor]:
        """Put the guide (its prototype already traced) at this start. Returns the factors Adam's steps are
        scaled by (``Adam.step_scales``): for each location entry its Laplace marginal sd, the steps Adam would
        take in coordinates the approximation whitens (Adam's step is about ``lr`` whatever the gradient, and a
        coefficient of sd 1e-3 then random-walks far from the start: sblrc's worst mean 0.75 sd off with svi's
        defaults, 0.06 with the steps scaled); for the scale parameters COVARIANCE_STEP."""
        if self.precision is None:
            covariance = conditional = marginal = None
        else:  # a mean-field Gaussian's optimum for a Gaussian posterior has the conditional sds, 1 / diag(precision)
            covariance = torch.cholesky_inverse(torch.linalg.cholesky(self.precision))
            conditional = self.precision.diagonal().rsqrt().to(self.theta.dtype)
            marginal = covariance.diagonal().sqrt().to(self.theta.dtype)
        step_scales = {}
        if isinstance(guide, ag.AutoNormal):
            locs = {name: _deep_set(guide.locs, name, loc) for name, loc in self.latents.split(self.theta).items()}
            if conditional is None:
                return {}
            for name, sd in self.latents.split(marginal).items():
                step_scales[locs[name]] = sd
            for name, scale in self.latents.split(conditional).items():
                param = _deep_set(guide.scales, name, scale)
                step_scales[param] = torch.full_like(param, COVARIANCE_STEP)
        elif isinstance(guide, ag.AutoDelta):
            for name, value in self.latents.constrain(self.theta).items():
                _deep_set(guide, name, value)
        else:  # an AutoContinuous: one flat vector in the guide's order of sites
            order = self.latents.coordinates(list(guide._unconstrained_shapes), self.theta.device)
            guide.loc = torch.nn.Parameter(self.theta[order].clone())
            if conditional is None:
                return {}
            step_scales = {guide.loc: marginal[order]}
            if isinstance(guide, ag.AutoMultivariateNormal):
                tril = torch.linalg.cholesky(covariance[order][:, order]).to(self.theta.dtype)
                guide.scale = tril.diagonal().clone()
                guide.scale_tril = tril / tril.diagonal().unsqueeze(-1)
                for name in ("scale_unconstrained", "scale_tril_unconstrained"):
                    step_scales[guide._parameters[name]] = torch.full_like(guide._parameters[name], COVARIANCE_STEP)
            elif isinstance(guide, ag.AutoDiagonalNormal):
                guide.scale = conditional[order]
        return step_scales


def resolve(init: str, guide, problem, minibatch: bool, chosen: bool) -> LaplaceStart | None:
    """The start ``init`` asks for on this problem: None for the prior's. ``"auto"``: the MAP where it is cheap
    and sound (an autoguide ``chosen`` by name, over the global latents of a model of at most LBFGS_MAX_DIM
    coordinates with no output layer, fitted on its full data in one process) and the search converges; else
    the prior."""
    if init not in INITS:
        raise ZooError(f"svi: init must be one of {INITS}, got {init!r}")
    if init == "prior":
        return None
    startable = isinstance(guide, STARTABLE) and not problem.sites.local
    if init == "map":
        if not startable:
            raise ZooError("svi: init='map' starts an autoguide (mean-field, full-rank ...) over global latents at "
                           "the MAP; a guide written by hand, or one with local latents, starts where it is written: "
                           "drop init='map'")
        start, trouble = laplace_start(problem)
        if trouble:
            raise ZooError(f"svi: init='map' found no MAP to start from ({trouble}); drop init='map'")
        return start
    if not (startable and chosen and problem.sites.latent and not minibatch and problem.world is None
            and problem.last_layer is None and problem.flat()[0].dim <= LBFGS_MAX_DIM):
        return None
    start, trouble = laplace_start(problem, quiet=True)
    return None if trouble else start


def laplace_start(problem, quiet: bool = False) -> tuple[LaplaceStart, str | None]:
    """The MAP of the problem's model on its full data, as Laplace finds it with its defaults, and the
    precision there; with what went wrong (the search stopped or, if ``quiet``, did not converge), else None."""
    joint, status = LaplaceTerms(problem), Status()
    search = ModeSearch("auto", num_steps=3000, lr=1e-2, lr_decay=0.1)
    theta = search.run(joint, joint.initial, 1.0, problem.progress and not quiet, [], status).detach()
    if status.interrupted:
        raise KeyboardInterrupt  # before the first step of svi there is no work to keep
    trouble = status.stopped or (quiet and (status.warnings or [None])[0])
    precision = None
    if not trouble and joint.latents.dim <= LBFGS_MAX_DIM:
        hessian = exact_curvature(lambda t: -joint.log_joint(t, 1.0), theta, "full").double()
        hessian = (hessian + hessian.T) / 2  # rows of Hessian-vector products agree to rounding only
        if int(torch.linalg.cholesky_ex(hessian).info) == 0:
            precision = hessian
        elif quiet:  # a flat direction (a GP's lengthscale of an irrelevant input): the mode says little
            trouble = "the Hessian at the MAP is not positive definite"
    start = LaplaceStart(joint.latents, theta, precision)
    if precision is not None and not start.pareto_k(problem) <= K_HAT_BAD:
        start.precision = None  # the mode, with the guide's own small scales
    return start, trouble


def _deep_set(module, dotted: str, value: torch.Tensor) -> torch.Tensor:
    """Set a guide's parameter by its site's (possibly dotted) name (PyroModule maps the value to its
    constraint's unconstrained space); the tensor Adam updates."""
    *parents, leaf = dotted.split(".")
    owner = reduce(getattr, parents, module)
    with torch.no_grad():
        setattr(owner, leaf, value.detach().clone())
    return owner._parameters[f"{leaf}_unconstrained"]
