"""One-step-ahead forecasting data: sliding windows over a time series, split in time order."""

from __future__ import annotations

import torch

from .._data import Split
from .._errors import ZooError
from ._registry import Dataset


def windows(series, length: int, test_fraction: float = 0.2, name: str = "series") -> Dataset:
    """Windows ``x[t] = series[t : t + length]`` (shape (n, length, features)) and targets
    ``y[t] = series[t + length, 0]``; the last ``test_fraction`` of windows is the test set.

    Values are standardised with the training part's mean and sd; ``y_mean``/``y_std`` map the
    targets back, so metrics come out in the series' units.

    >>> data = windows(torch.arange(20.0), length=4)
    >>> data.train.x.shape, data.test.x.shape
    (torch.Size([13, 4, 1]), torch.Size([3, 4, 1]))
    """
    series = torch.as_tensor(series, dtype=torch.float32)
    if series.dim() == 1:
        series = series.unsqueeze(-1)
    if series.dim() != 2 or not torch.isfinite(series).all():
        raise ZooError(f"windows: series must be finite values shaped (time,) or (time, features), "
                       f"got shape {tuple(series.shape)}")
    if not isinstance(length, int) or length < 1 or length >= series.shape[0] - 1:
        raise ZooError(f"windows: length must be an integer in [1, {series.shape[0] - 2}], got {length!r}")
    if not 0 < test_fraction < 1:
        raise ZooError(f"windows: test_fraction must be in (0, 1), got {test_fraction}")
    n = series.shape[0] - length
    n_test = max(1, round(n * test_fraction))
    train_end = n - n_test + length  # the last time step a training window or target touches
    mean, std = series[:train_end].mean(0), series[:train_end].std(0).clamp_min(1e-12)
    scaled = (series - mean) / std
    x = scaled.unfold(0, length, 1)[:n].transpose(1, 2)
    y = scaled[length:, 0]
    y_mean, y_std = float(mean[0]), float(std[0])

    def split(rows):
        return Split(x[rows], y[rows], mean, std, y_mean, y_std)

    return Dataset(name, split(slice(0, n - n_test)), split(slice(n - n_test, n)), task="regression")
