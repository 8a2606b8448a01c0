"""Where a dataset's files are looked for: ``path=``, then ``$ZOO_DATA``, the package, the user cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .._errors import ZooError


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/zoo`` (default ``~/.cache/zoo``): where downloads go."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "zoo"


def candidate_folders(name: str, path=None, group: str | None = None, shipped: Path | None = None) -> list[Path]:
    """The places for dataset ``name`` (optionally under a ``group`` folder such as ``uci``), in order:
    ``path`` itself and below it, ``$ZOO_DATA``, the folder shipped in the package, the user cache."""
    below = [Path(group, name), Path(name)] if group else [Path(name)]
    places = [Path(path), *(Path(path) / b for b in reversed(below))] if path is not None else []
    if os.environ.get("ZOO_DATA"):
        places += [Path(os.environ["ZOO_DATA"]) / b for b in below]
    if shipped is not None:
        places.append(shipped)
    return places + [cache_root() / below[0]]


def find_folder(places: list[Path], holds: Callable[[Path], bool], missing: str, hint: str) -> Path:
    """The first of ``places`` that ``holds`` the files, else a ZooError listing every place looked."""
    for place in places:
        if holds(place):
            return place
    looked = "\n  ".join(str(p) for p in places)
    raise ZooError(f"{missing}; looked in:\n  {looked}\n{hint}")
