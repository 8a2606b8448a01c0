"""Nothing lost: a fit stopped by a non-finite loss keeps its last finite state, and the CLI checks its
output folder before any work and saves what a stopped fit kept."""

import json
import math
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.cli import main


@pytest.fixture(scope="module")
def data():
    return zoo.datasets.load("yacht", split=0)


@pytest.mark.parametrize("lr, what", [(10.0, "gradient became non-finite"), (100.0, "loss became nan")])
def test_svi_with_a_wild_lr_stops_and_keeps_a_usable_posterior(data, lr, what):
    # lr 10: the update leaves finite but wild parameters whose gradient is not; lr 100: the next loss is nan.
    # Before the snapshot, both left non-finite parameters and drawing from the guide raised a torch ValueError.
    with pytest.raises(zoo.NonFiniteLossError, match=what) as stop:
        zoo.fit(zoo.load("bnn", data=data, hidden=[5]), data.train, "svi", num_steps=50, lr=lr, seed=0)
    post = stop.value.posterior
    assert post.status.stopped and 0 < post.status.steps_done < 50
    assert all(torch.isfinite(v).all() for v in post.samples.values())
    scores = post.evaluate(data.test)
    assert all(math.isfinite(v) for v in scores.values())
    assert len(post.loss) == post.status.steps_done and all(math.isfinite(v) for v in post.loss)


def test_laplace_stops_on_a_non_finite_map_and_keeps_its_last_finite_point(data):
    with pytest.raises(zoo.NonFiniteLossError, match="laplace MAP") as stop:
        zoo.fit(zoo.load("bnn", data=data, hidden=[5]), data.train, "laplace", num_steps=50, lr=1e4,
                prior_rounds=1, seed=0)
    assert all(torch.isfinite(v).all() for v in stop.value.posterior.samples.values())


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, timeout=300)


def test_cli_saves_the_last_finite_posterior_of_a_stopped_fit(tmp_path):
    out = tmp_path / "run"
    result = _cli("fit", "bnn", "--data", "yacht", "--set", "hidden=[5]", "--option", "num_steps=50", "lr=1e6",
                  "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("zoo: error: svi: the loss became nan") and f"to {out}/" in last
    assert zoo.load_posterior(out).status.stopped


def test_out_is_checked_before_the_fit(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    fit = ["fit", "bnn", "--data", "yacht", "--set", "hidden=[2]", "--option", "num_steps=2", "--num-samples", "2"]
    for out, message in [(a_file, "is a file"), ("/proc/zoo-run", "cannot be written")]:
        assert main([*fit, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and "fitting" not in err, err  # refused before the fit starts
    assert a_file.read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert main([*fit, "--out", str(other), "--overwrite"]) == 2
    assert "holds other files" in capsys.readouterr().err and (other / "notes.txt").is_file()


def test_an_earlier_run_is_replaced_only_with_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    fit = ["fit", "bnn", "--data", "yacht", "--set", "hidden=[2]", "--option", "num_steps=2", "--num-samples", "2",
           "--out", str(out)]
    assert main(fit) == 0
    (out / "trace.png").write_bytes(b"an old plot")
    assert main(fit) == 2
    assert "holds an earlier run; pass --overwrite" in capsys.readouterr().err
    assert main([*fit, "--backend", "laplace", "--option", "num_steps=2", "prior_rounds=1", "--overwrite"]) == 0
    assert not (out / "trace.png").exists()  # nothing of the old run is left beside the new one
    assert json.loads((out / "zoo.json").read_text())["method"] == "laplace"


@pytest.mark.parametrize("backend", ["nuts", "pyro-nuts"])
def test_nuts_into_a_region_where_the_model_is_undefined_keeps_finite_draws(backend):
    # above m = 1 the model builds a distribution from nan: Pyro raised there and the chain's work was lost;
    # now such a point has infinite energy, a divergence, and the draws stay on the defined side
    import pyro
    import pyro.distributions as dist

    def model(y=None):
        m = pyro.sample("m", dist.Normal(0.0, 3.0))
        pyro.factor("hole", torch.where(m > 1.0, torch.tensor(float("nan")), torch.tensor(0.0)))
        with pyro.plate("data", 5):
            return pyro.sample("y", dist.Normal(m, 1.0), obs=y)

    with pytest.warns(zoo.DiagnosticWarning, match="divergent transitions"):
        post = zoo.fit(model, (torch.full((5,), 0.8),), backend, num_warmup=100, num_samples=100, num_chains=1,
                       seed=0)
    m = post.samples["m"]
    assert torch.isfinite(m).all() and float(m.max()) <= 1.0 and int(post.sample_stats["diverging"].sum()) > 0


# the batched nuts traces the density once; eager, it calls the model at every leapfrog step as pyro-nuts does
@pytest.mark.parametrize("backend, options", [("nuts", dict(density="eager")), ("pyro-nuts", {})])
def test_an_interrupted_nuts_chain_keeps_its_draws(backend, options):
    import pyro
    import pyro.distributions as dist

    calls = [0]

    def model(y=None):
        calls[0] += 1
        if calls[0] == 500:  # Ctrl-C, well after warmup (at most 8 leapfrog steps per iteration)
            raise KeyboardInterrupt
        m = pyro.sample("m", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 5):
            return pyro.sample("y", dist.Normal(m, 1.0), obs=y)

    with pytest.warns(zoo.ZooWarning, match=f"{backend}: interrupted (after|with draws)"):
        post = zoo.fit(model, (torch.zeros(5),), backend, num_warmup=10, num_samples=1000, num_chains=1,
                       max_tree_depth=3, seed=0, **options)
    assert post.status.interrupted and 10 < post.num_draws < 1000
    assert torch.isfinite(post.samples["m"]).all() and post.sample_stats["lp"].shape == (1, post.num_draws)


def test_ctrl_c_ends_the_loop_after_the_step_under_way():
    import os
    import signal

    from zoo.inference.loop import run_steps

    finished = []

    def step(t):
        if t == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step, as a user's Ctrl-C does
        finished.append(t)
        return 1.0

    # a runner started in the background ignores SIGINT, and its children inherit that: the test sets Python's own
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = run_steps(100, step, "svi", progress=False)
        assert finished == [0, 1, 2, 3] and status.steps_done == 4
        assert status.interrupted == "svi: interrupted at step 4 of 100"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back as it was
    finally:
        signal.signal(signal.SIGINT, previous)
