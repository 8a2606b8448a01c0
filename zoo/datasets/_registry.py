"""Dataset registry: name -> loader, the same pattern as the model registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._data import Split
from .._errors import unknown_name
from .._registry import check_keywords

_LOADERS: dict[str, Callable] = {}


@dataclass
class Dataset:
    """A named dataset split into ``train`` and ``test`` (text sets also carry their ``vocab``)."""

    name: str
    train: Split
    test: Split
    split: int | None = None
    task: str = "regression"
    vocab: object | None = None


def register_dataset(name: str):
    def decorator(loader: Callable) -> Callable:
        _LOADERS[name] = loader
        return loader

    return decorator


def list_datasets() -> list[str]:
    return sorted(_LOADERS)


def load(name: str, **options) -> Dataset:
    """Load dataset ``name`` (or a UCI-format folder given as ``path=``); see each loader's options."""
    if name not in _LOADERS:
        raise unknown_name("dataset", name, _LOADERS)
    check_keywords(f"option of dataset {name!r}", _LOADERS[name], options)
    return _LOADERS[name](**options)
