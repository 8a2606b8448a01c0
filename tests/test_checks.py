"""Inputs checked before work starts: model config at load, data files with their line numbers, data and
devices at fit, save folders at load. Each refusal is a ZooError that names what was wrong."""

import json
import pathlib

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from zoo.cli import main


@pytest.mark.parametrize("config, message", [
    (dict(hidden=[0]), "hidden must be a list of positive integer widths"),
    (dict(hidden=[-5]), "hidden must be a list of positive integer widths"),
    (dict(hidden="[1,"), "hidden must be a list of positive layer widths"),
    (dict(prior_scale=float("nan")), "prior_scale must be a finite positive number, got nan"),
    (dict(prior_scale=float("inf")), "prior_scale must be a finite positive number, got inf"),
    (dict(prior_scale=-1), "prior_scale must be a finite positive number, got -1"),
    (dict(noise_scale=0), "noise_scale must be a finite positive number, got 0"),
    (dict(precision_prior=(-1, 0)), "precision_prior shape must be a finite positive number, got -1"),
    (dict(precision_prior=(1,)), r"precision_prior must be \(shape, rate\)"),
    (dict(dropout=1.5), r"dropout must be a rate in \[0, 1\), got 1.5"),
    (dict(in_features=0), "in_features must be a positive integer"),
])
def test_bnn_config_is_checked_at_load(config, message):
    with pytest.raises(zoo.ZooError, match=message):
        zoo.load("bnn", **{"in_features": 3, **config})


def test_classifier_refuses_fractional_labels_at_load():
    with pytest.raises(zoo.ZooError, match="integer class labels"):
        zoo.load("bnn-classifier", data=(torch.randn(5, 2), torch.tensor([0.0, 1.5, 1.0, 0.0, 1.0])))


@pytest.mark.parametrize("pairs, message", [
    (["hidden=[1,"], r"--set hidden=\[1,: the value is not valid JSON"),
    (["dropout=1.5"], r"dropout must be a rate in \[0, 1\)"),
    (["hidden"], "--set: expected KEY=VALUE"),
    (["prior_scale=1", "prior_scale=2"], "prior_scale is given twice"),
])
def test_cli_set_errors_are_one_line_and_exit_2(pairs, message, capsys, tmp_path):
    assert main(["fit", "bnn", "--data", "yacht", "--out", str(tmp_path / "o"), "--set", *pairs]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error:") and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(message, err), err


def test_split_on_a_dataset_without_splits_is_refused(capsys):
    with pytest.raises(zoo.ZooError, match="option of dataset 'mnist-mini' 'split'"):
        zoo.datasets.load("mnist-mini", split=0)
    assert main(["fit", "bayes-lenet", "--data", "mnist-mini", "--split", "1"]) == 2


def _uci_folder(tmp_path, rows: list[str], train=(0, 1, 2), test=(3,)):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "data.txt").write_text("\n".join(rows) + "\n")
    (folder / "index_features.txt").write_text("0\n1\n")
    (folder / "index_target.txt").write_text("2\n")
    (folder / "index_train_0.txt").write_text("\n".join(map(str, train)))
    (folder / "index_test_0.txt").write_text("\n".join(map(str, test)))
    (folder / "n_splits.txt").write_text("1\n")
    return folder


GOOD = ["1 2 3", "4 5 6", "7 8 10", "1 1 1"]


@pytest.mark.parametrize("rows, train, message", [
    (GOOD[:1] + ["4 5"] + GOOD[2:], (0, 1, 2), r"data.txt line 2: 2 values, but the first row has 3"),
    (GOOD[:2] + ["7 x 9"] + GOOD[3:], (0, 1, 2), r"data.txt line 3, column 1: 'x' is not a number"),
    (GOOD[:3] + ["1 nan 1"], (0, 1, 2), r"data.txt line 4, column 1: nan is not finite"),
    (GOOD, (0,), "split 0 has 1 training and 1 test rows"),
    (GOOD, (0, 1, 9), r"index_train_0.txt: 9 is not an index in \[0, 3\]"),
    (["1 2 5", "4 5 5", "7 8 5", "1 1 1"], (0, 1, 2), r"the target \(column 2 of data.txt\) is constant"),
])
def test_malformed_uci_folders_name_the_file_and_line(tmp_path, rows, train, message):
    folder = _uci_folder(tmp_path, rows, train)
    with pytest.raises(zoo.ZooError, match=message):
        zoo.datasets.load("uci", path=folder)


def test_a_well_formed_uci_folder_loads_standardised(tmp_path):
    d = zoo.datasets.load("uci", path=_uci_folder(tmp_path, GOOD))
    y = np.array([3.0, 6.0, 10.0])
    assert torch.allclose(d.train.y, torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32))
    assert float(d.test.y_original[0]) == pytest.approx(1.0, abs=1e-5)


def test_empty_data_and_unknown_devices_are_refused():
    zm = zoo.load("linear-regression", in_features=2)
    with pytest.raises(zoo.ZooError, match="has no rows"):
        zoo.fit(zm, (torch.zeros(0, 2), torch.zeros(0)), "svi")
    for device in ("meta", "gpu", "cuda:abc"):
        with pytest.raises(zoo.ZooError, match="expected 'cpu', 'cuda'"):
            zoo.fit(zm, (torch.zeros(4, 2), torch.zeros(4)), "svi", device=device)


def test_classification_metrics_refuse_labels_out_of_range():
    probs = torch.full((3, 2), 0.5)
    with pytest.raises(zoo.ZooError, match=r"labels y must lie in \[0, 1\]"):
        zoo.metrics.classification(probs, torch.tensor([0, 1, 2]))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    data = zoo.datasets.load("yacht", split=0)
    post = zoo.fit(zoo.load("bnn", data=data, hidden=[3]), data.train, "svi", num_steps=5, num_samples=5, seed=0)
    return post.save(tmp_path_factory.mktemp("saved") / "run"), data


def _copy(folder, tmp_path):
    import shutil

    return shutil.copytree(folder, tmp_path / "copy")


def test_a_save_whose_config_was_edited_is_refused(saved, tmp_path):
    folder = _copy(saved[0], tmp_path)
    meta = json.loads((folder / "zoo.json").read_text())
    meta["config"]["hidden"] = [4]
    (folder / "zoo.json").write_text(json.dumps(meta))
    with pytest.raises(zoo.ZooError, match="is not the one the draws were saved with"):
        zoo.load_posterior(folder)


def test_a_save_without_its_sites_is_refused(saved, tmp_path):
    folder = _copy(saved[0], tmp_path)
    meta = json.loads((folder / "zoo.json").read_text())
    del meta["sites"]
    (folder / "zoo.json").write_text(json.dumps(meta))
    with pytest.raises(zoo.ZooError, match=r"lacks \['sites'\]"):
        zoo.load_posterior(folder)


def test_a_pickled_samples_file_is_refused_without_torch_advice(saved, tmp_path):
    folder = _copy(saved[0], tmp_path)
    torch.save({"samples": pathlib.Path("not a tensor")}, folder / "samples.pt")  # a pickled object
    with pytest.raises(zoo.ZooError, match="never unpickles") as err:
        zoo.load_posterior(folder)
    assert "weights_only" not in str(err.value)


def test_an_observation_outside_any_plate_fits_but_has_no_pointwise_results(saved):
    data = saved[1]

    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        return pyro.sample("y", dist.Normal(w * x[:, 0], 1.0).to_event(1), obs=y)

    post = zoo.fit(model, data.train, "svi", num_steps=50, num_samples=20, seed=0)
    for call in (lambda: post.evaluate(data.test), lambda: post.predict(data.test.x),
                 lambda: post.log_likelihood(data.test), lambda: post.to_arviz(data.test)):
        with pytest.raises(zoo.ZooError, match="holds all its points in one event outside any plate"):
            call()
    assert set(post.to_arviz().posterior.data_vars) == {"w"}
