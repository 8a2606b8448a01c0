"""Datasets with standard splits, standardised on the training split, scaling kept.

>>> import zoo
>>> data = zoo.datasets.load("yacht", split=0)
>>> data.train.x.shape[1], len(data.train) + len(data.test)
(6, 308)
"""

from .._data import Split
from . import mnist, pdb, series, text, uci  # noqa: F401  (loaders register themselves)
from ._registry import Dataset, list_datasets, load

__all__ = ["Dataset", "Split", "list_datasets", "load"]
