import numpy as np
import pytest
import torch

import zoo


def test_yacht_split_is_standardised_with_training_statistics():
    data = zoo.datasets.load("yacht", split=3)
    assert data.train.x.shape == (277, 6) and data.test.x.shape == (31, 6)
    torch.testing.assert_close(data.train.x.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    assert float(data.train.y.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    raw = np.loadtxt(zoo.datasets.uci.find_folder("yacht") / "data.txt")
    test_idx = [int(v) for v in (zoo.datasets.uci.find_folder("yacht") / "index_test_3.txt").read_text().split()]
    np.testing.assert_allclose(data.test.y_original.numpy(), raw[test_idx, -1], rtol=1e-5)


@pytest.mark.parametrize("name", ["boston", "concrete", "energy", "yacht"])
def test_shipped_sets_have_twenty_splits(name):
    assert zoo.datasets.uci.num_splits(name) == 20
    data = zoo.datasets.load(name, split=19)
    assert len(data.train) > len(data.test) > 0


def test_zoo_data_environment_variable(tmp_path, monkeypatch):
    folder = tmp_path / "uci" / "tiny"
    folder.mkdir(parents=True)
    rows = np.column_stack([np.arange(10.0), np.arange(10.0) * 2 + 1])
    np.savetxt(folder / "data.txt", rows)
    (folder / "index_features.txt").write_text("0\n")
    (folder / "index_target.txt").write_text("1\n")
    (folder / "index_train_0.txt").write_text("\n".join(map(str, range(8))))
    (folder / "index_test_0.txt").write_text("8\n9\n")
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    data = zoo.datasets.load("uci", path=folder)
    np.testing.assert_allclose(data.test.y_original.numpy(), [17.0, 19.0], rtol=1e-5)


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    with pytest.raises(zoo.ZooError, match="ZOO_DATA") as err:
        zoo.datasets.load("protein")
    assert str(tmp_path) in str(err.value)


def test_unknown_dataset_lists_close_matches():
    with pytest.raises(zoo.ZooError, match="Did you mean 'yacht'"):
        zoo.datasets.load("yaht")


def test_split_out_of_range():
    with pytest.raises(zoo.ZooError, match=r"\[0, 19\]"):
        zoo.datasets.load("boston", split=20)
