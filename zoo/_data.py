"""Turning what the user hands to fit/predict into the model's positional arguments, checked."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from ._errors import ZooError


@dataclass
class Split:
    """One standardised split: ``x``, ``y`` plus the scaling that maps them back to original units."""

    x: torch.Tensor
    y: torch.Tensor
    x_mean: torch.Tensor | None = None
    x_std: torch.Tensor | None = None
    y_mean: float = 0.0
    y_std: float = 1.0

    @property
    def args(self) -> tuple:
        return (self.x, self.y)

    @property
    def y_original(self) -> torch.Tensor:
        return self.y * self.y_std + self.y_mean

    def __len__(self) -> int:
        return self.x.shape[0]

    def __iter__(self):
        return iter(self.args)


def as_args(data, device=None, name: str = "data", inputs_only: bool = False,
            model=None) -> tuple[tuple, tuple[float, float]]:
    """The model arguments for ``data`` and the target scaling ``(y_mean, y_std)``.

    A :class:`Split` gives ``(x, y)``, or ``(x,)`` with ``inputs_only`` (models of x alone); a tuple or
    list is passed through as it is; a dict names the arguments of ``model`` (those it leaves out take
    their defaults); a single array is one argument. Arrays become tensors; every tensor must be finite
    and all share their first dimension (the data plate).
    """
    scale = (0.0, 1.0)
    if isinstance(data, dict):
        data = by_name(data, model, name)
    if isinstance(data, Split):
        scale = (float(data.y_mean), float(data.y_std))
        data = (data.x,) if inputs_only else data.args
    elif isinstance(data, (torch.Tensor, np.ndarray)):
        data = (data,)
    elif not isinstance(data, (tuple, list)):
        raise ZooError(
            f"{name} must be a Split (e.g. zoo.datasets.load(...).train), a tuple of arrays "
            f"(x, y) with observations last, a dict of the model's arguments by name, or an array; "
            f"got {type(data).__name__}"
        )
    args = tuple(_as_tensor(a, i, name, device) for i, a in enumerate(data))
    rows = {a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0}
    if len(rows) > 1:
        shapes = ", ".join(str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor))
        raise ZooError(f"{name}: arrays disagree on the number of rows (shapes {shapes}); "
                       "every array needs one row per data point")
    if rows == {0}:
        raise ZooError(f"{name} has no rows: every array is empty")
    return args, scale


def rows_of(args: tuple, index) -> tuple:
    """The rows ``index`` (a slice or indices) of every per-point array in ``args``; the rest as they are."""
    return tuple(a[index] if isinstance(a, torch.Tensor) and a.dim() else a for a in args)


def by_name(data: dict, model, name: str = "data", every: bool = False) -> tuple:
    """The positional arguments of ``model`` from a dict naming them, up to the last one named (``every``:
    all of them); left-out ones take their defaults."""
    if model is None:
        raise ZooError(f"{name} given by name needs the model to order it; pass a tuple (x, y) instead")
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [p for p in inspect.signature(model).parameters.values() if p.kind in kinds]
    names = [p.name for p in params]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ZooError(f"{name}: {unknown} are not positional arguments of the model, which takes {names}")
    last = len(names) - 1 if every else max((i for i, n in enumerate(names) if n in data), default=-1)
    args = []
    for p in params[:last + 1]:
        if p.name not in data and p.default is inspect.Parameter.empty:
            raise ZooError(f"{name} has no {p.name!r}, an argument of the model without a default")
        args.append(data.get(p.name, p.default))
    return tuple(args)


def _as_tensor(a, i: int, name: str, device):
    if a is None or isinstance(a, (int, float, str, bool)):
        return a
    if isinstance(a, np.ndarray):
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise ZooError(f"{name}[{i}] has dtype {a.dtype}; expected numbers")
        a = torch.from_numpy(a)
    if not isinstance(a, torch.Tensor):
        raise ZooError(f"{name}[{i}] is a {type(a).__name__}; expected a tensor or numpy array")
    if a.dtype == torch.float64:
        a = a.float()
    if a.is_floating_point():
        bad = ~torch.isfinite(a)
        if bad.any():
            rows = torch.nonzero(bad.reshape(a.shape[0], -1).any(-1)).flatten()[:5].tolist() if a.dim() else []
            raise ZooError(f"{name}[{i}] contains {int(bad.sum())} NaN or infinite values "
                           f"(first rows {rows}); drop or impute them before fitting")
    return a.to(device) if device is not None else a


def training_arrays(data) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` of what a builder sizes a network from: a dataset's training split, a Split, ``(x, y)``,
    or ``x`` alone (then y is None)."""
    split = getattr(data, "train", data)
    if isinstance(split, Split):
        x, y = split.x, split.y
    elif isinstance(split, (tuple, list)):
        x, y = (*split, None)[:2]
    else:
        x, y = split, None
    return torch.as_tensor(x), None if y is None else torch.as_tensor(y)
