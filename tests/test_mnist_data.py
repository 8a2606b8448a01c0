import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.datasets.mnist import read_idx, verify_sha256, write_idx

FULL = Path("/work/shared/data/mnist")


def _idx_bytes(array: np.ndarray, code: int, fmt: str) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(fmt).tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_crafted_images_and_labels(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5, dtype=np.uint8)
    for name, array in (("img", images), ("lab", labels)):
        raw = _idx_bytes(array, 0x08, ">u1")
        file = tmp_path / (name + (".gz" if gz else ""))
        file.write_bytes(gzip.compress(raw) if gz else raw)
        out = read_idx(file)
        assert out.dtype == np.uint8 and out.shape == array.shape
        np.testing.assert_array_equal(out, array)


def test_read_idx_other_dtypes_and_write_idx(tmp_path):
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    (tmp_path / "f").write_bytes(_idx_bytes(floats, 0x0D, ">f4"))
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), floats)
    ints = np.arange(-6, 6, dtype=np.int16)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i.gz", ints)), ints)
    assert write_idx(tmp_path / "a.gz", ints).read_bytes() == write_idx(tmp_path / "b.gz", ints).read_bytes()


def test_read_idx_rejects_truncated_and_malformed_files(tmp_path):
    raw = _idx_bytes(np.zeros((4, 28, 28), np.uint8), 0x08, ">u1")
    cases = {
        "short.idx": (raw[:-10], "truncated"),
        "long.idx": (raw + b"\x00", "trailing"),
        "magic.idx": (b"\x12\x34" + raw[2:], "magic"),
        "dtype.idx": (raw[:2] + b"\x07" + raw[3:], "dtype"),
        "header.idx": (raw[:9], "header"),
        "cut.gz": (gzip.compress(raw)[:-20], "gzip"),
    }
    for name, (content, word) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(zoo.ZooError, match=word) as info:
            read_idx(tmp_path / name)
        assert name in str(info.value)


def test_mnist_mini_shapes_dtypes_and_ranges():
    data = zoo.datasets.load("mnist-mini")
    assert data.name == "mnist-mini" and data.task == "classification"
    assert data.train.x.shape == (2000, 1, 28, 28) and data.test.x.shape == (1000, 1, 28, 28)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    for split in (data.train, data.test):
        assert 0 <= float(split.x.min()) and float(split.x.max()) <= 1 and float(split.x.max()) > 0.99
        assert set(split.y.tolist()) == set(range(10))
    flat = zoo.datasets.load("mnist-mini", flatten=True)
    torch.testing.assert_close(flat.train.x, data.train.x.reshape(2000, 784))


def test_fraction_subset_depends_only_on_seed():
    a, b = (zoo.datasets.load("mnist-mini", fraction=0.25, seed=1) for _ in range(2))
    c = zoo.datasets.load("mnist-mini", fraction=0.25, seed=2)
    assert len(a.train) == 500 and len(a.test) == 1000
    torch.testing.assert_close(a.train.x, b.train.x)
    assert not torch.equal(a.train.x, c.train.x)
    for bad in (0, 1.5, -0.1, "half", True):
        with pytest.raises(zoo.ZooError, match="fraction"):
            zoo.datasets.load("mnist-mini", fraction=bad)


def test_binarize_is_fixed_and_binary():
    a, b = (zoo.datasets.load("mnist-mini", binarize=True, seed=3) for _ in range(2))
    c = zoo.datasets.load("mnist-mini", binarize=True, seed=4)
    for split in (a.train, a.test):
        assert set(split.x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.train.x, c.train.x)
    grey = zoo.datasets.load("mnist-mini")
    assert abs(float(a.train.x.mean()) - float(grey.train.x.mean())) < 0.01
    thresholded = zoo.datasets.load("mnist-mini", binarize="threshold")
    assert torch.equal(thresholded.train.x, (grey.train.x > 0.5).float())
    with pytest.raises(zoo.ZooError, match="binarize"):
        zoo.datasets.load("mnist-mini", binarize="yes")


def test_missing_mnist_lists_places_and_remedies(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path / "zoo_data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(zoo.ZooError) as info:
        zoo.datasets.load("mnist", path=tmp_path)
    message = str(info.value)
    for text in ("mnist-mini", "ZOO_DATA", "download()", "path=", str(tmp_path / "zoo_data" / "mnist"),
                 str(tmp_path / "cache" / "zoo" / "mnist")):
        assert text in message


def test_mnist_from_a_folder_via_zoo_data(tmp_path, monkeypatch):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for file in zoo.datasets.mnist.SHIPPED.iterdir():
        (folder / file.name).write_bytes(gzip.decompress(file.read_bytes()))  # decompressed copies also work
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    data = zoo.datasets.load("mnist")
    assert data.name == "mnist" and len(data.train) == 2000
    torch.testing.assert_close(data.test.x, zoo.datasets.load("mnist-mini").test.x)


def test_verify_sha256(tmp_path):
    file = tmp_path / "blob.gz"
    file.write_bytes(b"not really mnist")
    good = hashlib.sha256(b"not really mnist").hexdigest()
    assert verify_sha256(file, good) == file
    with pytest.raises(zoo.ZooError, match="blob.gz") as info:
        verify_sha256(file, "0" * 64)
    assert "0" * 64 in str(info.value) and good in str(info.value) and file.exists()
    with pytest.raises(zoo.ZooError):
        verify_sha256(file, "0" * 64, remove_bad=True)
    assert not file.exists()


def test_download_deletes_a_file_with_the_wrong_checksum(tmp_path, monkeypatch):
    def fake_urlretrieve(url, target):
        Path(target).write_bytes(b"a corrupted download")

    monkeypatch.setattr(zoo.datasets.mnist.urllib.request, "urlretrieve", fake_urlretrieve)
    with pytest.raises(zoo.ZooError, match="train-images-idx3-ubyte.gz"):
        zoo.datasets.mnist.download(tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not FULL.is_dir(), reason=f"{FULL} is not on this machine")
def test_full_mnist_from_the_shared_folder():
    data = zoo.datasets.load("mnist", path=str(FULL))
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert float(data.train.x.mean()) == pytest.approx(0.1307, abs=1e-3)
    mini = zoo.datasets.load("mnist-mini")
    assert torch.equal(mini.train.x, data.train.x[:2000]) and torch.equal(mini.train.y, data.train.y[:2000])
    assert torch.equal(mini.test.x, data.test.x[:1000]) and torch.equal(mini.test.y, data.test.y[:1000])
    for name, sha in zoo.datasets.mnist.FILES.items():
        if name != "train-images-idx3-ubyte.gz":  # the shared copy of that one is rebuilt, not the original
            verify_sha256(FULL / name, sha)
