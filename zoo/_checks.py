"""Checks of a model's config at ``zoo.load``: each names the option, what it must be and what it got, so a
bad value fails before any work rather than deep inside torch at fit time."""

from __future__ import annotations

import math
from numbers import Integral, Real

from ._errors import ZooError


def _number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def positive(model: str, **options) -> None:
    """Each option a finite number > 0."""
    for key, value in options.items():
        if not (_number(value) and math.isfinite(value) and value > 0):
            raise ZooError(f"{model}: {key} must be a finite positive number, got {value!r}")


def positive_or_none(model: str, **options) -> None:
    positive(model, **{k: v for k, v in options.items() if v is not None})


def probability(model: str, **options) -> None:
    """Each option a rate in [0, 1) (a dropout rate of 1 would drop every unit)."""
    for key, value in options.items():
        if not (_number(value) and 0 <= value < 1):
            raise ZooError(f"{model}: {key} must be a rate in [0, 1), got {value!r}")


def positive_int(model: str, **options) -> None:
    for key, value in options.items():
        if not (isinstance(value, Integral) and not isinstance(value, bool) and value > 0):
            raise ZooError(f"{model}: {key} must be a positive integer, got {value!r}")


def widths(model: str, key: str, value, allow_empty: bool = True) -> list[int]:
    """Layer widths: a list of positive integers (e.g. ``[50]`` or ``[50, 50]``), returned as ints."""
    example = "e.g. hidden=[50] or hidden=[50, 50]"
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ZooError(f"{model}: {key} must be a list of positive layer widths ({example}), got {value!r}")
    out = list(value)
    if not all(isinstance(w, Integral) and not isinstance(w, bool) and w > 0 for w in out):
        raise ZooError(f"{model}: {key} must be a list of positive integer widths ({example}), got {out!r}")
    if not out and not allow_empty:
        raise ZooError(f"{model}: {key} must list at least one layer width ({example})")
    return [int(w) for w in out]
