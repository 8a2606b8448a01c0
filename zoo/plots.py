"""PNG plots a fit writes: predictive mean +- 2 sd against the truth, and trace plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


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
