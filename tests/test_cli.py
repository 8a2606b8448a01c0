import json
import signal
import subprocess
import sys
import time

import pytest
import torch

import zoo
from zoo.cli import main


def test_list_and_info(capsys):
    assert main(["list"]) == 0
    assert "bnn-classifier" in capsys.readouterr().out
    assert main(["info", "bnn"]) == 0
    assert "Gamma(1, 0.01)" in capsys.readouterr().out


def test_fit_lenet_on_shipped_mnist_writes_reliability_and_uncertain_images(tmp_path, capsys):
    out = tmp_path / "lenet"
    code = main(["fit", "bayes-lenet", "--data", "mnist-mini", "--out", str(out), "--num-samples", "5",
                 "--set", "channels=[2, 3]", "hidden=8", "--option", "num_epochs=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "mutual_information" in printed
    for name in ("reliability.png", "most-uncertain.png", "idata.nc"):
        assert (out / name).stat().st_size > 1000, name
    again = zoo.load_posterior(out)
    # a net this small keeps every weight in ArviZ (a big one its last layer only)
    assert again.num_draws == 5 and set(again.to_arviz().posterior.data_vars) == {f"{k}{i}" for k in "wb"
                                                                               for i in range(4)}


@pytest.mark.parametrize("model", ["vae", "denoising-ae"])
def test_fit_autoencoder_prints_bounds_and_writes_three_pngs(model, tmp_path, capsys):
    out = tmp_path / model
    code = main(["fit", model, "--data", "mnist-mini", "--out", str(out), "--set", "hidden=[16]", "latent_dim=4",
                 "--option", "num_epochs=1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test ELBO" in printed and ("IWAE, k=100" in printed) == (model == "vae")
    for name in ("samples.png", "reconstructions.png", "latent.png", "idata.nc"):
        assert (out / name).stat().st_size > 1000, name
    assert zoo.load_posterior(out).encode(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


def test_fit_prints_metrics_and_writes_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["fit", "bnn", "--data", "yacht", "--backend", "nuts", "--out", str(out),
                 "--num-samples", "20", "--set", "hidden=[5]",
                 "--option", "num_warmup=50", "num_chains=2", "max_tree_depth=4"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "rmse" in printed and "test_ll" in printed and "wall" in printed and "precision" in printed
    for name in ("zoo.json", "samples.pt", "params.pt", "posterior.nc", "idata.nc", "predictive.png",
                 "trace.png"):
        assert (out / name).is_file(), name
    assert json.loads((out / "zoo.json").read_text())["method"] == "nuts"
    assert zoo.load_posterior(out).num_chains == 2


def test_bad_option_is_one_line_exit_2(capsys):
    assert main(["fit", "bnn", "--data", "yacht", "--option", "num_step=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("zoo: error:") and "num_steps" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_saves_the_work_done(tmp_path):
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "zoo", "fit", "bnn", "--data", "yacht", "--out", str(out), "--progress",
               "--option", "num_steps=10000000"]
    # a runner started in the background ignores SIGINT, and children inherit that: restore it
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
        try:
            seen = ""
            while "svi:" not in seen:  # the progress bar is up: the step loop has begun
                char = proc.stderr.read(1)
                assert char, f"the run ended before its step loop: {seen}"
                seen += char
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=300)
        finally:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert "interrupted" in stderr and (out / "zoo.json").is_file()
    assert zoo.load_posterior(out).status.interrupted.startswith("svi: interrupted at step")


def test_demo_quick_runs_all_three_backends(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for backend in ("svi", "laplace", "nuts"):
        assert backend in printed and (tmp_path / backend / "zoo.json").is_file()
        assert (tmp_path / f"predictive-{backend}.png").is_file()
    assert "elpd_loo" in printed and (tmp_path / "trace-nuts.png").is_file()
