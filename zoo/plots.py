"""PNG plots: predictive mean +- 2 sd against the truth, traces, reliability diagrams, image grids, latent scatters."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from . import metrics
from ._errors import ZooError


def predictive_plot(pred, y_true, path, title: str = "") -> Path:
    """Predicted mean +- 2 predictive sd against the observed value, one point per test case."""
    y = y_true.cpu().numpy()
    mean, std = pred.mean.cpu().numpy(), pred.std.cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.errorbar(y, mean, yerr=2 * std, fmt="o", ms=3, alpha=0.7, elinewidth=1, label="mean ± 2 sd")
    low, high = min(y.min(), mean.min()), max(y.max(), mean.max())
    ax.plot([low, high], [low, high], "k--", lw=1, label="y = prediction")
    ax.set(xlabel="observed", ylabel="predicted", title=title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def trace_plot(idata, var_names, path) -> Path:
    """ArviZ trace plot (densities and chains) of ``var_names``."""
    import arviz as az

    axes = az.plot_trace(idata, var_names=var_names, compact=True)
    fig = axes.ravel()[0].figure
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def reliability_diagram(probs: torch.Tensor, y: torch.Tensor, path, n_bins: int = 10, title: str = "") -> Path:
    """Accuracy per confidence bin as bars against the diagonal of perfect calibration, ECE in the legend.

    ``probs`` is (points, classes), or (draws, points, classes), which is averaged over draws first.
    """
    probs = torch.as_tensor(probs)
    if probs.dim() == 3:
        probs = probs.mean(0)
    bins = metrics.reliability(probs, y, n_bins)
    ece = metrics.ece(probs, y, n_bins)
    edges = bins["edges"].numpy()
    full = (bins["count"] > 0).numpy()
    left, width = edges[:-1][full], np.diff(edges)[full]
    accuracy, confidence = bins["accuracy"].numpy()[full], bins["confidence"].numpy()[full]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.bar(left, accuracy, width=width, align="edge", edgecolor="black", alpha=0.8, label=f"accuracy (ECE {ece:.3f})")
    ax.bar(left, confidence - accuracy, bottom=accuracy, width=width, align="edge", color="red", alpha=0.3,
           edgecolor="red", hatch="//", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy",
           title=f"{title} (ECE {ece:.3f})" if title else f"ECE {ece:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def image_grid(images, path, titles: list[str] | None = None, ncols: int = 8) -> Path:
    """Greyscale ``images`` shaped (n, 1, H, W) or (n, H, W) in a grid ``ncols`` wide, with optional titles."""
    images = np.asarray(images.detach().cpu() if isinstance(images, torch.Tensor) else images, dtype=float)
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[0] == 0:
        raise ZooError(f"images must be shaped (n, 1, H, W) or (n, H, W) with n >= 1; got {images.shape}")
    n = images.shape[0]
    if titles is not None and len(titles) != n:
        raise ZooError(f"titles must give one title per image: {n} images but {len(titles)} titles")
    if isinstance(ncols, bool) or not isinstance(ncols, int) or ncols < 1:
        raise ZooError(f"ncols must be a positive int; got {ncols!r}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.4 * ncols, 1.6 * nrows if titles else 1.4 * nrows),
                             squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap="gray")
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def latent_scatter(codes: torch.Tensor, labels, path, title: str = "") -> Path:
    """Codes (n, latent) as a 2-D scatter coloured by label; wider codes are shown on their top two
    principal components."""
    codes = torch.as_tensor(codes).detach().cpu().float()
    if codes.dim() != 2 or codes.shape[0] < 2:
        raise ZooError(f"codes must be shaped (points, latent) with at least 2 points; got {tuple(codes.shape)}")
    axes = ("z1", "z2")
    if codes.shape[1] > 2:
        centred = codes - codes.mean(0)
        codes = centred @ torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
        axes = ("principal component 1", "principal component 2")
    elif codes.shape[1] == 1:
        codes = torch.cat([codes, torch.zeros_like(codes)], 1)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(codes[:, 0], codes[:, 1], c=np.asarray(labels), cmap="tab10", s=4)
    fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def learning_curves(curves: dict[str, tuple[list, list]], path, metric: str = "error_pct") -> Path:
    """One line per name: ``metric`` (y) against the number of labels (x), as active learning reports it."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (labels, values) in curves.items():
        ax.plot(labels, values, marker="o", ms=3, label=name)
    ax.set(xlabel="labelled points", ylabel="test error (%)" if metric == "error_pct" else metric)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
