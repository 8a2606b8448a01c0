"""MNIST handwritten digits from the four standard IDX files, plus a small subset shipped as ``"mnist-mini"``.

>>> import zoo
>>> data = zoo.datasets.load("mnist-mini", fraction=0.25, flatten=True)
>>> tuple(data.train.x.shape), tuple(data.test.x.shape), data.task
((500, 784), (1000, 784), 'classification')

``"mnist-mini"`` holds the first 2,000 training and the first 1,000 test digits of the local copy the
package was built from. Its test files and all labels are byte-exact MNIST; its training images come from
a copy rebuilt from PNGs (97 % of pixels exact, none off by more than one grey level out of 255).
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.request
from pathlib import Path

import numpy as np
import torch

from .._data import Split
from .._errors import ZooError
from . import _folders
from ._registry import Dataset, register_dataset

SHIPPED = Path(__file__).parent / "mnist_mini"
FILES = {  # original gzipped files and their SHA-256
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into an array of its stored shape and dtype.

    Parameters
    ----------
    path : str or Path
        The file; gzip is recognised by its magic bytes, not by the name.

    Returns
    -------
    numpy.ndarray
        Native-endian array with the shape given in the header.

    Raises
    ------
    ZooError
        If the file is missing, truncated, not gzip-readable, has a bad magic number or unknown dtype code,
        or holds more or fewer bytes than its header promises.
    """
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"IDX file {path} does not exist")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ZooError(f"{path.name}: broken or truncated gzip data ({error})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ZooError(f"{path.name}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; "
                       "expected 00 00 <dtype> <ndim>)")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise ZooError(f"{path.name}: unknown IDX dtype code 0x{code:02x}; known: "
                       + ", ".join(f"0x{c:02x}" for c in _DTYPES))
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ZooError(f"{path.name}: IDX header with {ndim} dimensions is truncated or empty "
                       f"({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - 4 - 4 * ndim
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise ZooError(f"{path.name}: {what}: header says shape {shape} ({expected} data bytes), "
                       f"file holds {got}")
    return np.frombuffer(raw, dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzipped with ``mtime=0`` (reproducible bytes) if ``path`` ends in .gz."""
    path, array = Path(path), np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _DTYPES.items()}
    if array.dtype not in codes or array.ndim == 0:
        raise ZooError(f"cannot write dtype {array.dtype} with {array.ndim} dimensions as IDX")
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw = header + array.astype(_DTYPES[code]).tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if path.suffix == ".gz" else raw)
    return path


def cache_folder() -> Path:
    """The user cache folder for MNIST: ``$XDG_CACHE_HOME/zoo/mnist`` (default ``~/.cache/zoo/mnist``)."""
    return _folders.cache_root() / "mnist"


def find_folder(path=None) -> Path:
    """The first of ``path``, ``path/mnist``, ``$ZOO_DATA/mnist``, the user cache holding all four files."""
    return _folders.find_folder(
        _folders.candidate_folders("mnist", path),
        lambda place: all(_file(place, name) is not None for name in FILES),
        f"MNIST not found (looked for {', '.join(FILES)})",
        "Set ZOO_DATA to a folder holding mnist/, pass zoo.datasets.load('mnist', path=FOLDER), call "
        "zoo.datasets.mnist.download() if you have internet, or use the shipped subset "
        "zoo.datasets.load('mnist-mini')")


def _file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def load_mnist(folder, fraction: float = 1.0, seed: int = 0, binarize=False, flatten: bool = False,
               name: str = "mnist") -> Dataset:
    """MNIST from ``folder`` as float32 images in [0, 1] and int64 labels.

    Parameters
    ----------
    folder : str or Path
        Folder holding the four IDX files (``.gz`` or decompressed).
    fraction : float
        Keep a random subset of ``round(fraction * n_train)`` training digits, in (0, 1]. The subset
        depends only on ``seed`` (``torch.Generator().manual_seed(seed)``), not stratified by class.
        The test set is always complete.
    seed : int
        Seeds the training subset and the binarisation.
    binarize : bool or "threshold"
        ``False``: grey levels / 255. ``True``: fixed binarisation, each pixel drawn once as
        Bernoulli(intensity) with a generator seeded by ``seed`` (the same 0/1 images on every load
        with that seed, train and test). ``"threshold"``: pixel > 0.5.
    flatten : bool
        Images as ``(n, 784)`` rows instead of ``(n, 1, 28, 28)``.
    name : str
        The name the returned dataset carries.

    Returns
    -------
    Dataset
        ``task="classification"``; ``train`` and ``test`` are :class:`~zoo.Split` with ``x`` and ``y``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ZooError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not (isinstance(binarize, bool) or binarize == "threshold"):
        raise ZooError(f"binarize must be False, True (fixed stochastic binarisation) or 'threshold', "
                       f"got {binarize!r}")
    folder = Path(folder)
    x_train, y_train = _pair(folder, "train")
    x_test, y_test = _pair(folder, "t10k")
    if binarize is True:
        generator = torch.Generator().manual_seed(seed)
        x_train, x_test = torch.bernoulli(x_train, generator=generator), torch.bernoulli(x_test, generator=generator)
    elif binarize == "threshold":
        x_train, x_test = (x_train > 0.5).float(), (x_test > 0.5).float()
    keep = round(fraction * len(y_train))
    if keep < 1:
        raise ZooError(f"fraction={fraction!r} keeps no training digits out of {len(y_train)}")
    if keep < len(y_train):
        idx = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed))[:keep].sort().values
        x_train, y_train = x_train[idx], y_train[idx]
    if flatten:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    return Dataset(name, Split(x_train, y_train), Split(x_test, y_test), task="classification")


def _pair(folder: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = read_idx(_file(folder, f"{prefix}-images-idx3-ubyte.gz") or folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(_file(folder, f"{prefix}-labels-idx1-ubyte.gz") or folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ZooError(f"{prefix} images in {folder}: expected uint8 (n, 28, 28), got {images.dtype} {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
        raise ZooError(f"{prefix} labels in {folder}: expected {len(images)} uint8 labels, "
                       f"got {labels.dtype} {labels.shape}")
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def verify_sha256(path, expected: str, remove_bad: bool = False) -> Path:
    """Check that ``path`` has SHA-256 ``expected``; on a mismatch raise ZooError (deleting it if ``remove_bad``)."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected.lower():
        if remove_bad:
            path.unlink()
        raise ZooError(f"{path.name}: SHA-256 mismatch, expected {expected}, got {actual}"
                       + (" (the file was deleted)" if remove_bad else ""))
    return path


def download(root=None, mirror: str = MIRROR) -> Path:
    """Download the four MNIST files into ``root`` (default the user cache folder) and check their SHA-256.

    Files already present with the right checksum are kept. A downloaded file with a wrong checksum is
    deleted and a ZooError names it with the expected and actual digest. Returns the folder.
    """
    root = Path(root) if root is not None else cache_folder()
    root.mkdir(parents=True, exist_ok=True)
    for name, sha in FILES.items():
        target = root / name
        if target.is_file():
            try:
                verify_sha256(target, sha)
                continue
            except ZooError:
                pass  # a stale or partial file: fetch it again
        url = mirror.rstrip("/") + "/" + name
        part = root / (name + ".part")
        try:
            urllib.request.urlretrieve(url, part)
        except OSError as error:
            part.unlink(missing_ok=True)
            raise ZooError(f"could not download {url} ({error}); without internet use "
                           "zoo.datasets.load('mnist-mini') or copy the files into a folder given as path=") from None
        verify_sha256(part, sha, remove_bad=True)
        part.replace(target)
    return root


@register_dataset("mnist")
def mnist(path=None, fraction: float = 1.0, seed: int = 0, binarize=False, flatten: bool = False) -> Dataset:
    """MNIST, 60,000 training and 10,000 test digits; see :func:`load_mnist` for the options.

    The files are looked for in ``path`` (or ``path/mnist``), ``$ZOO_DATA/mnist`` and the user cache
    (``$XDG_CACHE_HOME/zoo/mnist``, where :func:`download` puts them).
    """
    return load_mnist(find_folder(path), fraction=fraction, seed=seed, binarize=binarize, flatten=flatten)


@register_dataset("mnist-mini")
def mnist_mini(fraction: float = 1.0, seed: int = 0, binarize=False, flatten: bool = False) -> Dataset:
    """The first 2,000 training and 1,000 test MNIST digits, shipped with the package; options as :func:`load_mnist`."""
    return load_mnist(SHIPPED, fraction=fraction, seed=seed, binarize=binarize, flatten=flatten, name="mnist-mini")
