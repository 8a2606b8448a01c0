"""Predictive metrics on tensors: regression (RMSE, Gaussian NLL) and classification (accuracy, ECE, Brier)."""

from __future__ import annotations

import torch


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


def ece(probs: torch.Tensor, y: torch.Tensor, n_bins: int = 10) -> float:
    """Expected calibration error: confidence-vs-accuracy gap over equal-width confidence bins."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == y.long()).float()
    bins = torch.clamp((confidence * n_bins).ceil().long() - 1, 0, n_bins - 1)
    conf_sum = torch.zeros(n_bins).index_add_(0, bins.cpu(), confidence.cpu().float())
    acc_sum = torch.zeros(n_bins).index_add_(0, bins.cpu(), correct.cpu())
    return float((acc_sum - conf_sum).abs().sum() / probs.shape[0])
