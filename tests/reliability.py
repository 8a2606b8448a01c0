"""The reliability catalogue: bad or unusual inputs, each with the behaviour a user should get, run through the
public API and the CLI as a user would. ``tests/test_reliability.py`` asserts every case behaves;
``benchmarks/reliability.py`` runs the sweep and writes the table in ``docs/reliability.md``.

Expected behaviours: ``refuse`` (a ZooError, or in the CLI one line on stderr and exit 2, before any work),
``keep`` (a fit stopped by a non-finite loss hands back, or the CLI saves, its last finite posterior),
``warn`` (a result, with a ZooWarning saying what to look at). Verdicts: ``clear`` (as expected), ``unclear``
(another exception: a traceback from inside torch, Pyro, numpy or xarray), ``silent`` (a result, or a NaN
metric, where there should have been a refusal or a warning), ``lost`` (a stopped fit that kept nothing).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch

import zoo


@dataclass(frozen=True)
class Case:
    group: str
    input: str
    expect: str  # "refuse" | "keep" | "warn"
    run: Callable[[Path], object]


@dataclass(frozen=True)
class Cli:
    """What a CLI call gave: its exit status, its stderr, and the --out folder it was pointed at."""

    rc: int
    err: str
    out: Path | None = None


def cli(*argv: str, out: Path | None = None) -> Cli:
    from zoo.cli import main

    args = [*argv, *(["--out", str(out)] if out is not None else [])]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(args)
        except SystemExit as exit_:  # argparse
            rc = exit_.code
    return Cli(rc, err.getvalue(), out)


@functools.cache
def yacht():
    return zoo.datasets.load("yacht", split=0)


def bnn(**config):
    return zoo.load("bnn", data=yacht(), **{"hidden": [3], **config})


def svi(model=None, data=None, **options):
    return zoo.fit(model or bnn(), yacht().train if data is None else data, "svi",
                   **{"num_steps": 3, "num_samples": 3, "seed": 0, **options})


def scored(post, data=None):
    """The posterior's test scores: a NaN among them is a silent failure."""
    return post.evaluate(yacht().test if data is None else data)


def _fit_cli(tmp: Path, *extra: str, out: str | None = None) -> Cli:
    return cli("fit", "bnn", "--data", "yacht", "--set", "hidden=[2]", "--option", "num_steps=2",
               "--num-samples", "2", *extra, out=Path(out) if out else tmp / "run")


def _file(tmp: Path) -> str:
    (tmp / "file").write_text("mine")
    return str(tmp / "file")


def _earlier_run(tmp: Path) -> Cli:
    _fit_cli(tmp)
    return _fit_cli(tmp)


def _unplated(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    return pyro.sample("y", dist.Normal(w * x[:, 0], 1.0).to_event(1), obs=y)


def _no_observation(x, y=None):
    pyro.sample("w", dist.Normal(0.0, 1.0))


def _local_latent(x, y=None):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        return pyro.sample("y", dist.Normal(z, 1.0), obs=y)


def _unplated_post():
    return svi(_unplated, num_steps=20)


def _scaled(factor_x: float, factor_y: float):
    train = yacht().train
    return (train.x * factor_x, train.y * factor_y)


def _uci(tmp: Path, rows, train=(0, 1, 2)):
    folder = tmp / "toy"
    folder.mkdir(exist_ok=True)
    (folder / "data.txt").write_text("\n".join(rows) + "\n")
    for name, text in {"index_features.txt": "0\n1\n", "index_target.txt": "2\n", "n_splits.txt": "1\n",
                       "index_train_0.txt": "\n".join(map(str, train)), "index_test_0.txt": "3\n"}.items():
        (folder / name).write_text(text)
    return zoo.datasets.load("uci", path=folder)


GOOD_ROWS = ["1 2 3", "4 5 6", "7 8 10", "1 1 1"]


@functools.cache
def _saved_folder(root: Path) -> Path:
    return svi().save(root / "saved")


def _corrupt(tmp: Path, edit: Callable[[Path], None]):
    folder = shutil.copytree(_saved_folder(tmp.parent), tmp / "copy")
    edit(folder)
    return scored(zoo.load_posterior(folder))


def _edit_meta(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path):
        meta = json.loads((folder / "zoo.json").read_text())
        change(meta)
        (folder / "zoo.json").write_text(json.dumps(meta))

    return edit


def _cli_keeps(tmp: Path) -> Cli:
    return cli("fit", "bnn", "--data", "yacht", "--set", "hidden=[5]", "--option", "num_steps=50", "lr=1e6",
               out=tmp / "stopped")


def _undefined_region(y=None):
    m = pyro.sample("m", dist.Normal(0.0, 3.0))
    pyro.factor("hole", torch.where(m > 1.0, torch.tensor(math.nan), torch.tensor(0.0)))
    with pyro.plate("data", 5):
        return pyro.sample("y", dist.Normal(m, 1.0), obs=y)


def _nuts_scaled():
    data = _scaled(1.0, 1e6)
    return zoo.fit(zoo.load("linear-regression", data=data), data, "nuts", num_warmup=30, num_samples=20,
                   num_chains=1, max_tree_depth=4, seed=0)


CASES = [
    # --- the CLI
    Case("cli", "--out naming an existing file", "refuse", lambda t: _fit_cli(t, out=_file(t))),
    Case("cli", "--out in an unwritable place (/proc/x)", "refuse", lambda t: _fit_cli(t, out="/proc/zoo-x")),
    Case("cli", "--out naming an earlier run, no --overwrite", "refuse", _earlier_run),
    Case("cli", "--set 'hidden=[1,' (not JSON)", "refuse", lambda t: _fit_cli(t, "--set", "hidden=[1,")),
    Case("cli", "--set dropout=1.5", "refuse", lambda t: _fit_cli(t, "--set", "dropout=1.5")),
    Case("cli", "--set hidden (no value)", "refuse", lambda t: _fit_cli(t, "--set", "hidden")),
    Case("cli", "--split on a dataset without splits (mnist-mini)", "refuse",
         lambda t: cli("fit", "bayes-lenet", "--data", "mnist-mini", "--split", "1", out=t / "run")),
    Case("cli", "unknown model name", "refuse", lambda t: cli("fit", "bnnn", "--data", "yacht", out=t / "run")),
    Case("cli", "unknown dataset", "refuse", lambda t: cli("fit", "bnn", "--data", "yaht", out=t / "run")),
    Case("cli", "unknown backend", "refuse", lambda t: _fit_cli(t, "--backend", "hmc2")),
    Case("cli", "unknown backend option", "refuse", lambda t: _fit_cli(t, "--option", "num_step=3")),
    Case("cli", "--option num_steps=-1", "refuse", lambda t: _fit_cli(t, "--option", "num_steps=-1")),
    Case("cli", "--device meta", "refuse", lambda t: _fit_cli(t, "--device", "meta")),
    Case("cli", "--option lr=1e6 (the loss becomes nan)", "keep", _cli_keeps),
    # --- model config at zoo.load
    Case("config", "bnn hidden=[0]", "refuse", lambda t: bnn(hidden=[0])),
    Case("config", "bnn hidden=[-5]", "refuse", lambda t: bnn(hidden=[-5])),
    Case("config", "bnn hidden='50'", "refuse", lambda t: bnn(hidden="50")),
    Case("config", "bnn prior_scale=nan", "refuse", lambda t: bnn(prior_scale=math.nan)),
    Case("config", "bnn prior_scale=inf", "refuse", lambda t: bnn(prior_scale=math.inf)),
    Case("config", "bnn prior_scale=-1", "refuse", lambda t: bnn(prior_scale=-1)),
    Case("config", "bnn noise_scale=0", "refuse", lambda t: bnn(noise_scale=0)),
    Case("config", "bnn precision_prior=(-1, 0)", "refuse", lambda t: bnn(precision_prior=(-1, 0))),
    Case("config", "bnn dropout=1.5", "refuse", lambda t: bnn(dropout=1.5)),
    Case("config", "bnn activation='sigmoidal'", "refuse", lambda t: bnn(activation="sigmoidal")),
    Case("config", "bnn-classifier with fractional labels", "refuse",
         lambda t: zoo.load("bnn-classifier", data=(torch.randn(4, 2), torch.tensor([0.0, 0.5, 1.0, 1.0])))),
    Case("config", "linear-regression prior_scale=nan", "refuse",
         lambda t: zoo.load("linear-regression", in_features=2, prior_scale=math.nan)),
    Case("config", "vae latent_dim=0", "refuse", lambda t: zoo.load("vae", input_shape=(4,), latent_dim=0)),
    Case("config", "hierarchical-regression num_groups=0", "refuse",
         lambda t: zoo.load("hierarchical-regression", in_features=1, num_groups=0)),
    Case("config", "unknown config option", "refuse", lambda t: bnn(hiden=[3])),
    # --- data handed to fit
    Case("fit data", "empty arrays", "refuse", lambda t: svi(data=(torch.zeros(0, 6), torch.zeros(0)))),
    Case("fit data", "a NaN in x", "refuse",
         lambda t: svi(data=(yacht().train.x.clone().index_fill_(0, torch.tensor([3]), math.nan), yacht().train.y))),
    Case("fit data", "an inf in y", "refuse",
         lambda t: svi(data=(yacht().train.x, yacht().train.y.clone().index_fill_(0, torch.tensor([0]), math.inf)))),
    Case("fit data", "x with the wrong number of features", "refuse",
         lambda t: svi(data=(yacht().train.x[:, :3], yacht().train.y))),
    Case("fit data", "x 1-D", "refuse", lambda t: svi(data=(yacht().train.x[:, 0], yacht().train.y))),
    Case("fit data", "integer x", "refuse", lambda t: svi(data=(yacht().train.x.long(), yacht().train.y))),
    Case("fit data", "x and y disagree on rows", "refuse",
         lambda t: svi(data=(yacht().train.x, yacht().train.y[:-1]))),
    Case("fit data", "y 2-D", "refuse", lambda t: svi(data=(yacht().train.x, yacht().train.y[:, None]))),
    Case("fit data", "a string instead of arrays", "refuse", lambda t: svi(data="yacht")),
    Case("fit data", "classifier labels out of range", "refuse",
         lambda t: svi(zoo.load("bnn-classifier", in_features=2, out_features=2, hidden=[2]),
                       (torch.randn(4, 2), torch.tensor([0, 1, 2, 1])))),
    Case("fit data", "dict naming an argument the model lacks", "refuse",
         lambda t: svi(_unplated, {"x": yacht().train.x, "z": yacht().train.y})),
    # --- fit options
    Case("fit options", "device='meta'", "refuse", lambda t: svi(device="meta")),
    Case("fit options", "device='cuda' without a GPU (or an index past the last)", "refuse",
         lambda t: svi(device="cuda:99")),
    Case("fit options", "num_samples=0", "refuse", lambda t: svi(num_samples=0)),
    Case("fit options", "num_steps=0", "refuse", lambda t: svi(num_steps=0)),
    Case("fit options", "lr=-1", "refuse", lambda t: svi(lr=-1.0)),
    Case("fit options", "batch_size=0", "refuse", lambda t: svi(batch_size=0)),
    Case("fit options", "unknown backend", "refuse", lambda t: zoo.fit(bnn(), yacht().train, "hmc2")),
    Case("fit options", "nuts target_accept=1.5", "refuse",
         lambda t: zoo.fit(bnn(), yacht().train, "nuts", target_accept=1.5)),
    Case("fit options", "laplace hessian='diagonal'", "refuse",
         lambda t: zoo.fit(bnn(), yacht().train, "laplace", hessian="diagonal")),
    # --- models written the ordinary way
    Case("models", "observed site outside any plate: evaluate", "refuse", lambda t: scored(_unplated_post())),
    Case("models", "observed site outside any plate: predict", "refuse",
         lambda t: _unplated_post().predict(yacht().test.x)),
    Case("models", "observed site outside any plate: to_arviz(data)", "refuse",
         lambda t: _unplated_post().to_arviz(yacht().test)),
    Case("models", "site= naming a latent", "refuse",
         lambda t: _unplated_post().log_likelihood(yacht().test, site="w")),
    Case("models", "a model without an observed site", "refuse", lambda t: svi(_no_observation)),
    Case("models", "a local latent in plate 'data'", "refuse", lambda t: svi(_local_latent)),
    Case("models", "not a callable", "refuse", lambda t: zoo.fit("bnn", yacht().train)),
    # --- numerics
    Case("numerics", "svi lr=10 (the gradient becomes non-finite)", "keep", lambda t: svi(num_steps=50, lr=10.0)),
    Case("numerics", "svi lr=100 (the loss becomes nan)", "keep", lambda t: svi(num_steps=50, lr=100.0)),
    Case("numerics", "svi lr=1e6", "keep", lambda t: svi(num_steps=50, lr=1e6)),
    Case("numerics", "laplace lr=1e4", "keep",
         lambda t: zoo.fit(bnn(), yacht().train, "laplace", num_steps=50, lr=1e4, prior_rounds=1, seed=0)),
    Case("numerics", "y scaled by 1e6 (svi)", "warn", lambda t: svi(data=_scaled(1.0, 1e6))),
    Case("numerics", "x scaled by 1e6 (svi)", "warn", lambda t: svi(data=_scaled(1e6, 1.0))),
    Case("numerics", "y scaled by 1e6 (nuts)", "warn", lambda t: _nuts_scaled()),
    Case("numerics", "nuts into a region where the model builds a distribution from nan", "warn",
         lambda t: zoo.fit(_undefined_region, (torch.full((5,), 0.8),), "nuts", num_warmup=50, num_samples=50,
                           num_chains=1, seed=0)),
    # --- data files
    Case("data files", "data.txt with a short row", "refuse", lambda t: _uci(t, ["1 2 3", "4 5", "7 8 9", "1 1 1"])),
    Case("data files", "data.txt with a non-numeric cell", "refuse",
         lambda t: _uci(t, ["1 2 3", "4 5 6", "7 x 9", "1 1 1"])),
    Case("data files", "data.txt with one NaN", "refuse", lambda t: _uci(t, ["1 2 3", "4 nan 6", "7 8 9", "1 1 1"])),
    Case("data files", "a split with one training row", "refuse", lambda t: _uci(t, GOOD_ROWS, train=(0,))),
    Case("data files", "a constant target", "refuse", lambda t: _uci(t, ["1 2 5", "4 5 5", "7 8 5", "1 1 1"])),
    Case("data files", "an index past the last row", "refuse", lambda t: _uci(t, GOOD_ROWS, train=(0, 1, 9))),
    # --- prediction
    Case("predict", "x with the wrong number of features", "refuse",
         lambda t: svi().predict(yacht().test.x[:, :2])),
    Case("predict", "a NaN in test x", "refuse",
         lambda t: svi().predict(yacht().test.x.clone().index_fill_(0, torch.tensor([1]), math.nan))),
    Case("predict", "classifier test labels out of range", "refuse",
         lambda t: svi(zoo.load("bnn-classifier", in_features=2, out_features=2, hidden=[2]),
                       (torch.randn(6, 2), torch.tensor([0, 1] * 3))).evaluate(
                           (torch.randn(3, 2), torch.tensor([0, 1, 5])))),
    # --- save folders
    Case("save folders", "a folder without zoo.json", "refuse", lambda t: zoo.load_posterior(t)),
    Case("save folders", "zoo.json not JSON", "refuse",
         lambda t: _corrupt(t, lambda f: (f / "zoo.json").write_text("{nope"))),
    Case("save folders", "zoo.json of another format", "refuse",
         lambda t: _corrupt(t, _edit_meta(lambda m: m.update(format="other")))),
    Case("save folders", "zoo.json without its sites", "refuse",
         lambda t: _corrupt(t, _edit_meta(lambda m: m.pop("sites")))),
    Case("save folders", "config edited to disagree with the weights", "refuse",
         lambda t: _corrupt(t, _edit_meta(lambda m: m["config"].update(hidden=[4])))),
    Case("save folders", "target_scale edited to null", "refuse",
         lambda t: _corrupt(t, _edit_meta(lambda m: m.update(target_scale=None)))),
    Case("save folders", "samples.pt truncated", "refuse",
         lambda t: _corrupt(t, lambda f: (f / "samples.pt").write_bytes((f / "samples.pt").read_bytes()[:100]))),
    Case("save folders", "samples.pt a pickle of other objects", "refuse",
         lambda t: _corrupt(t, lambda f: torch.save({"samples": Path("x")}, f / "samples.pt"))),
    Case("save folders", "params.pt missing", "refuse", lambda t: _corrupt(t, lambda f: (f / "params.pt").unlink())),
]


def verdict(case: Case, tmp: Path) -> tuple[str, str]:
    """How ``case`` behaved, and what it said."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = case.run(tmp)
        except zoo.NonFiniteLossError as stop:
            kept = stop.posterior is not None and all(torch.isfinite(v).all() for v in stop.posterior.samples.values())
            if case.expect == "keep":
                return ("clear" if kept else "lost"), str(stop)
            return "clear", str(stop)
        except zoo.ZooError as err:
            return ("clear" if case.expect == "refuse" else "unclear"), str(err)
        except Exception as err:  # any other exception is what the sweep counts as unclear
            return ("lost" if case.expect == "keep" else "unclear"), f"{type(err).__name__}: {err}"
    said = [str(w.message) for w in caught if issubclass(w.category, zoo.ZooWarning)]
    if isinstance(result, Cli):
        first = result.err.strip().splitlines()[-1] if result.err.strip() else ""
        one_line = result.rc == 2 and first.startswith("zoo: error:") and "Traceback" not in result.err
        if case.expect == "refuse":
            return ("clear" if one_line else "silent" if result.rc == 0 else "unclear"), first
        try:  # what was kept must load
            kept = zoo.load_posterior(result.out).status.stopped is not None
        except zoo.ZooError:
            kept = False
        return ("clear" if one_line and kept else "lost"), first
    if isinstance(result, dict) and any(isinstance(v, float) and math.isnan(v) for v in result.values()):
        return "silent", f"NaN metric: {result}"
    if case.expect == "warn":
        return ("clear", said[0]) if said else ("silent", "a result, without a warning")
    return "silent", "a result, without a word" + (f" (warned: {said[0]})" if said else "")
