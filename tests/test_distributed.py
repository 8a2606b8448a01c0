"""Fits over two gloo processes started by torchrun, against the same fits in this one process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import zoo

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from distributed_fits import fits  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None or not torch.distributed.is_gloo_available(),
                                reason="needs torchrun and the gloo backend")
TORCHRUN = ["torchrun", "--standalone", "--nproc-per-node", "2"]


def torchrun(*args, cwd, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*TORCHRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_two_processes_give_the_one_process_fits(tmp_path):
    run = torchrun(str(HERE / "distributed_fits.py"), str(tmp_path / "two.pt"), cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    two = torch.load(tmp_path / "two.pt", weights_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short fits: diagnostics warn
        one = fits()
    # SVI, delta guide, full batch: each process half of the points, gradients averaged: the same ELBO trace
    torch.testing.assert_close(two["delta_loss"], one["delta_loss"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(two["delta_w"], one["delta_w"], rtol=1e-5, atol=1e-5)
    # mean-field with minibatches of 16 (8 per process): every process ends with the same parameters, and the
    # loss follows the one-process run's (their Monte Carlo noise differs on rank 1)
    assert two["field_params_equal_on_ranks"]
    assert abs(two["field_loss"][-20:].mean() / one["field_loss"][-20:].mean() - 1) < 0.1
    # NUTS: 4 chains, 2 per process, mass matrix pooled over all 4: the very draws of one process
    assert torch.equal(two["nuts_w"], one["nuts_w"])
    assert torch.equal(two["nuts_stats"], one["nuts_stats"])
    # ChEES: 4 chains, 2 per process, step size and trajectory length learnt across all 4: the same draws
    assert two["chees_length"] == one["chees_length"]
    assert torch.equal(two["chees_steps"], one["chees_steps"])
    assert torch.equal(two["chees_w"], one["chees_w"])
    # a batch smaller than the number of processes is refused, with what to do
    assert "use a batch_size of at least 2" in two["one_point_batches"]


def test_the_scaling_pages_script_runs_as_printed(tmp_path):
    page = (HERE.parent / "docs" / "scaling.md").read_text()
    (tmp_path / "fit.py").write_text(re.findall(r"```python\n(.*?)```", page, flags=re.S)[0])
    run = torchrun("fit.py", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    post = zoo.load_posterior(tmp_path / "runs/yacht")
    assert post.info["batch_size"] == 64 and post.info["num_steps"] == 200


def test_cli_under_torchrun_writes_once_and_refuses_on_every_rank(tmp_path):
    fit = torchrun("-m", "zoo", "fit", "bnn", "--data", "yacht", "--split", "0", "--set", "hidden=[10]",
                   "--option", "num_steps=100", "--option", "batch_size=64", "--num-samples", "100",
                   "--out", "runs/yacht", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert fit.stdout.count("bnn on yacht split 0 with svi") == 1  # rank 0 reports
    assert "on 2 processes" in fit.stderr
    post = zoo.load_posterior(tmp_path / "runs/yacht")
    assert post.num_draws == 100 and post.info["batch_size"] == 64

    refused = torchrun("-m", "zoo", "fit", "bnn", "--data", "yacht", "--backend", "laplace", "--out", "runs/l",
                       cwd=tmp_path, timeout=120)
    assert refused.returncode != 0
    assert refused.stderr.count("zoo: error:") == 1 and "laplace runs in one process" in refused.stderr
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", refused.stderr)
    # no rank hung: each stopped with 2, or was stopped by torchrun (SIGTERM) when another had
    assert "2" in codes and set(codes) <= {"2", "-15"}, refused.stderr[-2000:]
