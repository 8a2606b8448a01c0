"""Laplace's prior precision: chosen by the evidence (a grid, then MacKay's per-site updates) or by the log
predictive density of held-out data (a grid around the evidence's choice, as laplace-torch's gridsearch)."""

from __future__ import annotations

import math

import torch

PRIOR_GRID = [10 ** (k / 10) for k in range(-30, 31)]  # prior-precision factors the evidence chooses from
MACKAY_ITERATIONS = 50
VALIDATION_GRID = [10 ** (k / 2) for k in range(-6, 7)]  # factors on the evidence's choice, then refined
VALIDATION_DRAWS = 100


class Evidence:
    """The Laplace estimate of the log marginal likelihood as a function of the prior-precision factors
    ``alpha`` (one per coordinate of ``sub``), with the data's curvature held at ``precision``."""

    def __init__(self, joint, theta, sub, precision):
        with torch.no_grad():
            fixed = joint.total_log_likelihood(theta) + joint.other_log_prior(theta).item()
        self.fixed = fixed + 0.5 * len(sub) * math.log(2 * math.pi)
        self.d = joint.normal_precision[sub].double()
        self.squares = self.d * (theta[sub] - joint.prior_loc[sub]).double() ** 2
        self.normal = self.d > 0
        self.precision = precision

    def __call__(self, alpha) -> float:
        logdet = self.precision.logdet(alpha)
        if logdet is None:
            return -math.inf
        log_prior = 0.5 * ((alpha * self.d / (2 * math.pi)).log() - alpha * self.squares)[self.normal].sum()
        return self.fixed + float(log_prior) - 0.5 * logdet

    def well_determined(self, alpha, counted: torch.Tensor) -> float:
        """MacKay's gamma: how many of the ``counted`` coordinates the data determine, ``sum(1 - alpha d Sigma_ii)``;
        one each where the prior is not Normal (a flat prior leaves them all to the data)."""
        shrunk = alpha * self.d * self.precision.variances(alpha)
        return float((1 - shrunk)[counted].sum())

    def best(self, groups: list[torch.Tensor] | None) -> torch.Tensor:
        """One factor for all from a grid; then with ``groups`` (positions in the subset, one group per
        site) one factor per group by MacKay's updates ``alpha_k = gamma_k / |theta_k|^2_d``,
        ``gamma_k = n_k - alpha_k tr(Sigma_k d)``, kept if the evidence rose."""
        ones = torch.ones_like(self.d)
        if not bool(self.normal.any()):
            return ones
        alpha = ones * max(PRIOR_GRID, key=lambda a: self(a * ones))
        best = self(alpha)
        if groups is None or not math.isfinite(best):  # (not positive definite: refused after)
            return alpha
        groups = [g for g in groups if bool(self.normal[g].all())]
        trial = alpha.clone()
        for _ in range(MACKAY_ITERATIONS):
            variances = self.precision.variances(trial)
            previous = trial.clone()
            for g in groups:
                gamma = len(g) - float((trial[g] * self.d[g] * variances[g]).sum())
                trial[g] = min(max(gamma, 1e-8) / max(float(self.squares[g].sum()), 1e-12), PRIOR_GRID[-1] * 1e3)
            if float(((trial - previous).abs() / previous).max()) < 1e-4:
                break
        return trial if self(trial) > best else alpha


def by_validation(score, alpha: torch.Tensor) -> tuple[float, float]:
    """The factor on ``alpha`` that maximises ``score(alpha * factor)`` (the held-out log predictive density),
    from a grid of half-decades, then quarter-decades beside the best; and its score."""
    scores = {}

    def scored(factor):
        if factor not in scores:
            scores[factor] = score(alpha * factor)
        return scores[factor]

    best = max(VALIDATION_GRID, key=scored)
    best = max((best * 10**-0.25, best, best * 10**0.25), key=scored)
    return best, scores[best]


def tie(groups: list[torch.Tensor], tied: list[torch.Tensor]) -> list[torch.Tensor]:
    """``groups`` (disjoint positions covering the subset) merged wherever one of ``tied`` spans several."""
    label = torch.cat([torch.full((len(g),), k) for k, g in enumerate(groups)])[torch.cat(groups).argsort().cpu()]
    for block in tied:
        present = label[block.cpu()].unique()
        label[torch.isin(label, present)] = int(present.min())
    return [(label == k).nonzero().squeeze(-1).to(groups[0].device) for k in label.unique().tolist()]
