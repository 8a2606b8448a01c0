"""Predictive metrics on tensors: regression (RMSE, Gaussian NLL) and classification (accuracy, ECE, Brier).

Classification uncertainty (natural-log units): predictive entropy (total), expected entropy (aleatoric),
mutual information (epistemic, BALD), out-of-distribution AUROC, and reliability bins for calibration.
"""

from __future__ import annotations

import torch

from ._errors import ZooError

SUM_TOL = 1e-3  # how far a class axis may sum from 1


def rmse(mean: torch.Tensor, y: torch.Tensor) -> float:
    """Root mean squared error of point predictions ``mean`` against targets ``y``."""
    return float(((mean - y) ** 2).mean().sqrt())


def accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of points whose most probable class (probs: points x classes) is ``y``."""
    return float((probs.argmax(-1) == y.long()).float().mean())


def nll(probs: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean negative log probability of the true class."""
    return float(-(probs.gather(-1, y.long().unsqueeze(-1)).squeeze(-1).clamp_min(eps).log()).mean())


def brier(probs: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over points of the squared distance between ``probs`` and the one-hot label."""
    onehot = torch.nn.functional.one_hot(y.long(), probs.shape[-1]).to(probs.dtype)
    return float(((probs - onehot) ** 2).sum(-1).mean())


def _check_probs(probs: torch.Tensor, ranks: tuple[int, ...], name: str = "probs") -> torch.Tensor:
    """``probs`` as a tensor, checked: rank in ``ranks``, non-empty, in [0, 1], each class axis summing to 1."""
    probs = torch.as_tensor(probs)
    shapes = {2: "(points, classes)", 3: "(draws, points, classes)"}
    if probs.dim() not in ranks:
        want = " or ".join(shapes[r] for r in ranks)
        raise ZooError(f"{name} must be shaped {want}; got shape {tuple(probs.shape)}")
    if probs.numel() == 0:
        raise ZooError(f"{name} is empty (shape {tuple(probs.shape)}); pass at least one point and one class")
    if not probs.is_floating_point():
        probs = probs.double()
    if not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ZooError(f"{name} must be probabilities in [0, 1] (no NaN); pass softmax outputs, not logits")
    gap = (probs.sum(-1) - 1).abs()
    if not bool((gap <= SUM_TOL).all()):
        raise ZooError(f"{name} must sum to 1 over the last (class) axis within {SUM_TOL}; "
                       f"the worst point is off by {float(gap.max()):.3g}")
    return probs


def _check_labels(y: torch.Tensor, n_points: int, n_classes: int) -> torch.Tensor:
    """``y`` as a long tensor of ``n_points`` labels in [0, n_classes - 1]."""
    y = torch.as_tensor(y)
    if y.shape != (n_points,):
        raise ZooError(f"y must be shaped ({n_points},), one label per point of probs; got {tuple(y.shape)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ZooError("y must hold whole-number class labels")
    y = y.long()
    if not bool(((y >= 0) & (y < n_classes)).all()):
        raise ZooError(f"y must hold class labels in [0, {n_classes - 1}] for probs with {n_classes} classes; "
                       f"got values from {int(y.min())} to {int(y.max())}")
    return y


def _check_n_bins(n_bins: int) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ZooError(f"n_bins must be a positive int; got {n_bins!r}")


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis with 0 log 0 = 0."""
    return -torch.special.xlogy(probs, probs).sum(-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the predictive (total uncertainty), one value per point.

    ``probs`` is (draws, points, classes), averaged over draws first, or a single predictive (points, classes).
    """
    probs = _check_probs(probs, (2, 3))
    return _entropy(probs.mean(0) if probs.dim() == 3 else probs)


def expected_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over draws of each draw's entropy (aleatoric uncertainty); ``probs`` (draws, points, classes)."""
    return _entropy(_check_probs(probs, (3,))).mean(0)


def mutual_information(probs: torch.Tensor) -> torch.Tensor:
    """Predictive minus expected entropy (epistemic uncertainty, BALD), clamped at 0 for round-off.

    ``probs`` is (draws, points, classes); returns one value per point.
    """
    probs = _check_probs(probs, (3,))
    return (_entropy(probs.mean(0)) - _entropy(probs).mean(0)).clamp_min(0)


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    """Area under the ROC curve for telling out-of-distribution points (higher score) from in-distribution ones.

    Exact, via the Mann-Whitney U statistic on average ranks: the chance that a random out-of-distribution
    score beats a random in-distribution one, ties counting 1/2. 1 is perfect, 0.5 is chance.
    """
    scores_in = torch.as_tensor(scores_in).detach().cpu().double().flatten()
    scores_out = torch.as_tensor(scores_out).detach().cpu().double().flatten()
    if scores_in.numel() == 0 or scores_out.numel() == 0:
        raise ZooError("auroc needs at least one in-distribution and one out-of-distribution score")
    scores = torch.cat([scores_in, scores_out])
    if not bool(scores.isfinite().all()):
        raise ZooError("auroc scores must be finite (no NaN or inf)")
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    counts = counts.double()
    tied_rank = counts.cumsum(0) - (counts - 1) / 2  # average 1-based rank of each distinct value
    n_in, n_out = scores_in.numel(), scores_out.numel()
    rank_sum_out = tied_rank[inverse[n_in:]].sum()
    u = rank_sum_out - n_out * (n_out + 1) / 2
    return float(u / (n_in * n_out))


OOD_SCORES = {"entropy": predictive_entropy, "mutual_information": mutual_information}


def ood_auroc(probs_in: torch.Tensor, probs_out: torch.Tensor, score: str = "entropy") -> float:
    """AUROC for detecting out-of-distribution points by an uncertainty ``score`` of their predictive.

    ``probs_in`` and ``probs_out`` are (draws, points, classes); ``score`` is ``"entropy"`` (predictive
    entropy) or ``"mutual_information"``.
    """
    if score not in OOD_SCORES:
        raise ZooError(f"unknown score {score!r}; choose one of {', '.join(map(repr, OOD_SCORES))}")
    probs_in, probs_out = _check_probs(probs_in, (3,), "probs_in"), _check_probs(probs_out, (3,), "probs_out")
    if probs_in.shape[-1] != probs_out.shape[-1]:
        raise ZooError(f"probs_in has {probs_in.shape[-1]} classes but probs_out has {probs_out.shape[-1]}")
    return auroc(OOD_SCORES[score](probs_in), OOD_SCORES[score](probs_out))


def reliability(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 10) -> dict[str, torch.Tensor]:
    """Confidence (top-class probability) against accuracy in ``n_bins`` equal-width bins of [0, 1].

    Bin i holds confidences in (edges[i], edges[i+1]]; a confidence of 0 goes in the first bin.
    Returns ``confidence`` and ``accuracy`` (bin means, NaN for empty bins), ``count`` (points per
    bin) and ``edges`` (n_bins + 1). ``probs`` is (points, classes), ``y`` the labels.
    """
    _check_n_bins(n_bins)
    probs = _check_probs(probs, (2,)).detach().cpu()
    y = _check_labels(torch.as_tensor(y).detach().cpu(), probs.shape[0], probs.shape[1])
    confidence, predicted = probs.max(-1)
    correct = (predicted == y).to(probs.dtype)
    bins = torch.clamp((confidence * n_bins).ceil().long() - 1, 0, n_bins - 1)
    count = torch.zeros(n_bins, dtype=torch.long).index_add_(0, bins, torch.ones_like(bins))
    conf_sum = torch.zeros(n_bins, dtype=probs.dtype).index_add_(0, bins, confidence)
    acc_sum = torch.zeros(n_bins, dtype=probs.dtype).index_add_(0, bins, correct)
    n = count.to(probs.dtype)
    return {"confidence": conf_sum / n, "accuracy": acc_sum / n, "count": count,
            "edges": torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype)}


def ece(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 10) -> float:
    """Expected calibration error: sum over non-empty bins of count / N * |accuracy - confidence|.

    Bins as in :func:`reliability`.
    """
    bins = reliability(probs, y, n_bins)
    full = bins["count"] > 0
    weight = bins["count"][full].to(bins["accuracy"].dtype) / bins["count"].sum()
    return float((weight * (bins["accuracy"][full] - bins["confidence"][full]).abs()).sum())


def classification(probs: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``accuracy``, ``nll``, ``ece`` and ``brier`` of a predictive ``probs`` (points, classes)."""
    classes = probs.shape[-1]
    if y.shape != probs.shape[:1] or (y.is_floating_point() and not torch.equal(y, y.round())):
        raise ZooError(f"labels y must be whole class ids, one per point ({probs.shape[0]},); got {y.dtype} "
                       f"of shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ZooError(f"labels y must lie in [0, {classes - 1}] (the model's classes), got range "
                       f"[{int(y.min())}, {int(y.max())}]")
    return {"accuracy": accuracy(probs, y), "nll": nll(probs, y), "ece": ece(probs, y), "brier": brier(probs, y)}
