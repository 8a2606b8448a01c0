"""Property-based fuzzing: whatever a user hands the CLI parser, zoo.load, fit / predict / evaluate or
load_posterior, the outcome is a result or a ZooError, never another exception and never a NaN metric.
Examples are derandomised (the same ones every run, so CI cannot flake); HYPOTHESIS_PROFILE=explore runs
fresh random ones."""

import json
import math
import os
import shutil
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import zoo
from zoo.cli import key_values

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("explore", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 60), FLOATS, st.text(max_size=6))
JSON_VALUES = st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3))


def _ok_metrics(scores: dict) -> None:
    assert not any(isinstance(v, float) and math.isnan(v) for v in scores.values()), scores


@given(st.lists(st.text(max_size=12), max_size=4))
def test_key_value_parser_returns_a_dict_or_a_zoo_error(pairs):
    try:
        parsed = key_values(pairs, "--set")
    except zoo.ZooError:
        return
    assert isinstance(parsed, dict) and len(parsed) == len(pairs)


BNN_OPTIONS = ["hidden", "prior_scale", "dropout", "noise_scale", "precision_prior", "activation"]
BNN_VALUES = {"hidden": st.one_of(JSON_VALUES, st.lists(st.integers(-2, 8), max_size=3)),
              "activation": st.one_of(st.sampled_from(["relu", "tanh", "softplus"]), JSON_SCALARS)}


@given(st.dictionaries(st.sampled_from(BNN_OPTIONS), JSON_VALUES, max_size=3).flatmap(
    lambda d: st.fixed_dictionaries({k: BNN_VALUES.get(k, JSON_VALUES) for k in d})))
def test_bnn_configs_load_fit_and_score_or_refuse(config):
    torch.manual_seed(0)
    x = torch.randn(12, 2)
    y = x[:, 0] + 0.1 * torch.randn(12)
    try:
        zm = zoo.load("bnn", in_features=2, **config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", zoo.ZooWarning)  # e.g. a prior scale that predicts other data
            post = zoo.fit(zm, (x, y), "svi", num_steps=3, num_samples=3, seed=0, progress=False)
        scores = post.evaluate((x, y))
    except zoo.ZooError:
        return
    _ok_metrics(scores)


DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.bool_])


def _arrays(max_dims=3):
    shapes = hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=5)
    return DTYPES.flatmap(lambda dt: hnp.arrays(dt, shapes, elements=None if dt != np.float32 else FLOATS))


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    x = torch.randn(20, 2)
    y = x @ torch.tensor([1.0, -1.0]) + 0.1 * torch.randn(20)
    zm = zoo.load("linear-regression", in_features=2)
    return zm, zoo.fit(zm, (x, y), "svi", num_steps=50, num_samples=5, seed=0, progress=False)


@given(_arrays(), _arrays(max_dims=2))
def test_fit_takes_any_arrays_or_refuses(fitted, x, y):
    zm, _ = fitted
    try:
        post = zoo.fit(zm, (x, y), "svi", num_steps=2, num_samples=2, seed=0, progress=False)
    except zoo.ZooError:
        return
    assert all(torch.isfinite(v).all() for v in post.samples.values())


@given(_arrays(), _arrays(max_dims=2))
def test_predict_and_evaluate_take_any_arrays_or_refuse(fitted, x, y):
    _, post = fitted
    try:
        pred = post.predict(x)
        assert torch.isfinite(pred.mean).all()
    except zoo.ZooError:
        pass
    try:
        scores = post.evaluate((x, y))
    except zoo.ZooError:
        return
    _ok_metrics(scores)


@pytest.fixture(scope="module")
def saved(fitted, tmp_path_factory):
    data = zoo.datasets.load("yacht", split=0)
    post = zoo.fit(zoo.load("bnn", data=data, hidden=[2]), data.train, "svi", num_steps=3, num_samples=3, seed=0,
                   progress=False)
    return post.save(tmp_path_factory.mktemp("saved") / "run"), data


FILES = ["zoo.json", "samples.pt", "params.pt", "posterior.nc"]
META_KEYS = ["model", "config", "method", "sites", "options", "target_scale", "loss", "info", "format", "version"]


@given(st.sampled_from(FILES), st.sampled_from(["delete", "truncate", "garble"]), st.integers(0, 4000),
       st.binary(min_size=1, max_size=8))
def test_corrupted_save_files_load_or_refuse(saved, tmp_path, file, how, at, junk):
    folder, data = saved
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)  # examples share tmp_path
    shutil.copytree(folder, copy)
    target = copy / file
    content = target.read_bytes()
    if how == "delete":
        target.unlink()
    elif how == "truncate":
        target.write_bytes(content[:at % max(len(content), 1)])
    else:
        at %= max(len(content), 1)
        target.write_bytes(content[:at] + junk + content[at + len(junk):])
    _load_and_score(copy, data)


@given(st.sampled_from(META_KEYS), st.one_of(st.just("<delete>"), JSON_VALUES,
                                             st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=2)))
def test_edited_zoo_json_loads_or_refuses(saved, tmp_path, key, value):
    folder, data = saved
    copy = tmp_path / "copy"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "zoo.json").read_text())
    if value == "<delete>":
        meta.pop(key)
    else:
        meta[key] = value
    (copy / "zoo.json").write_text(json.dumps(meta))
    _load_and_score(copy, data)


def _load_and_score(folder, data):
    try:
        post = zoo.load_posterior(folder)
        scores = post.evaluate(data.test)
    except zoo.ZooError:
        return
    _ok_metrics(scores)
