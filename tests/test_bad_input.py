import subprocess
import sys
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo

from .catalogue import make_eight_schools


@pytest.fixture(scope="module")
def data():
    return zoo.datasets.load("yacht", split=0)


@pytest.fixture(scope="module")
def model(data):
    return zoo.load("bnn", data=data, hidden=[5])


def test_unknown_model_lists_close_matches():
    with pytest.raises(zoo.ZooError, match="Did you mean 'bnn'"):
        zoo.load("bnnn")


def test_unknown_model_option_lists_the_options():
    with pytest.raises(zoo.ZooError, match="Did you mean 'hidden'.*Its options:"):
        zoo.load("bnn", hiden=[5])


def test_unknown_backend_and_backend_option(model, data):
    with pytest.raises(zoo.ZooError, match="Did you mean 'nuts'"):
        zoo.fit(model, data.train, "nutz")
    with pytest.raises(zoo.ZooError, match="Did you mean 'num_steps'"):
        zoo.fit(model, data.train, "svi", num_step=3)


def test_refused_backend_gives_the_reason():
    @zoo.register_model("test-refuses", task="regression", refused={"nuts": "too many weights"})
    def build():
        def model(x, y=None):
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)

        return model

    try:
        with pytest.raises(zoo.ZooError, match="does not support backend 'nuts': too many weights"):
            zoo.fit(zoo.load("test-refuses"), (torch.zeros(3, 1), torch.zeros(3)), "nuts")
    finally:
        zoo.unregister_model("test-refuses")


def test_shape_and_dtype_mismatch(model, data):
    x, y = data.train.args
    with pytest.raises(zoo.ZooError, match="disagree on the number of rows"):
        zoo.fit(model, (x, y[:-1]), "svi")
    with pytest.raises(zoo.ZooError, match=r"shape \(points, 6\)"):
        zoo.fit(model, (x[:, :4], y), "svi")
    with pytest.raises(zoo.ZooError, match="expected numbers"):
        zoo.fit(model, (np.array([["a"] * 6] * 3), np.zeros(3)), "svi")
    with pytest.raises(zoo.ZooError, match="floating point"):
        zoo.fit(model, (x.long(), y), "svi")


def test_nan_and_inf_in_data(model, data):
    x, y = data.train.args
    x = x.clone()
    x[3, 1] = float("nan")
    with pytest.raises(zoo.ZooError, match=r"NaN or infinite values \(first rows \[3\]\)"):
        zoo.fit(model, (x, y), "svi")
    with pytest.raises(zoo.ZooError, match="NaN or infinite"):
        zoo.fit(model, (data.train.x, torch.full_like(data.train.y, float("inf"))), "laplace")


@pytest.mark.parametrize("num_samples", [0, -5])
def test_num_samples_must_be_positive(model, data, num_samples):
    with pytest.raises(zoo.ZooError, match="num_samples must be a positive integer"):
        zoo.fit(model, data.train, "svi", num_samples=num_samples)


def test_classifier_labels_out_of_range():
    x, y = torch.randn(10, 2), torch.tensor([0, 1] * 5)
    zm = zoo.load("bnn-classifier", data=(x, y), hidden=[3])
    with pytest.raises(zoo.ZooError, match=r"labels must lie in \[0, 1\]"):
        zoo.fit(zm, (x, y + 1), "svi")


def test_corrupt_and_foreign_save_folders(model, data, tmp_path):
    with pytest.raises(zoo.ZooError, match="holds no zoo.json"):
        zoo.load_posterior(tmp_path)
    (tmp_path / "zoo.json").write_text('{"format": "something-else"}')
    with pytest.raises(zoo.ZooError, match="is not a zoo posterior"):
        zoo.load_posterior(tmp_path)
    post = zoo.fit(model, data.train, "svi", num_steps=5, num_samples=5)
    folder = post.save(tmp_path / "run")
    (folder / "samples.pt").write_bytes(b"not a torch file")
    with pytest.raises(zoo.ZooError, match="corrupt"):
        zoo.load_posterior(folder)


def _flaky_model(fail_at: int, error):
    calls = [0]

    def model(x, y=None):
        calls[0] += 1
        if calls[0] == fail_at:
            raise error
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(b, 1.0), obs=y)

    return model


def test_interrupt_keeps_the_work_done():
    x, y = torch.zeros(20, 1), torch.ones(20)
    with pytest.warns(zoo.ZooWarning, match="interrupted at step"):
        post = zoo.fit(_flaky_model(40, KeyboardInterrupt()), (x, y), "svi", num_steps=100, num_samples=10,
                       init="prior")
    assert 15 <= len(post.loss) < 40 and post.flat_samples()["b"].shape == (10,)


def _wide_net(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([400, x.shape[1]]).to_event(2))  # 200,000 weights
    v = pyro.sample("v", dist.Normal(0.0, 1.0).expand([400]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(torch.tanh(x @ w.T) @ v, 1.0), obs=y)


def test_laplace_refuses_a_structure_that_would_not_fit_before_allocating_it(monkeypatch):
    from zoo.inference import laplace

    def never(*args, **kwargs):
        raise AssertionError("the refusal came after the MAP search or the curvature had started")

    monkeypatch.setattr(laplace.ModeSearch, "run", never)  # refused at once: no MAP, no curvature
    monkeypatch.setattr(laplace, "build_precision", never)
    x, y = torch.randn(10, 500), torch.randn(10)
    # a dense precision over 200,400 weights: 4 float64 matrices of 321 GB
    with pytest.raises(zoo.ZooError, match=r"hessian='full' over 200,400 parameters needs about 1196\.9 GiB.*"
                                           r"these fit: hessian='diag'.*hessian='kron'.*hessian='lowrank'"):
        zoo.fit(_wide_net, (x, y), "laplace", hessian="full", memory_limit_gb=8)
    with pytest.raises(zoo.ZooError, match=r"hessian='kron'.*these fit: hessian='diag'"):
        zoo.fit(_wide_net, (x, y), "laplace", hessian="kron", memory_limit_gb=0.01)


def test_cli_errors_are_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "zoo", "fit", "bnnn", "--data", "yacht"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "Did you mean 'bnn'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_laplace_refuses_minibatches_of_a_model_that_does_not_index_its_data():
    def whole_data(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):  # the plate's indices unused: every block would see every point
            pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)

    x = torch.randn(40)
    with pytest.raises(zoo.ZooError, match="batch_size needs a model whose observations"):
        zoo.fit(whole_data, (x, 2 * x), "laplace", batch_size=10)
    assert zoo.fit(whole_data, (x, 2 * x), "laplace", batch_size=40, num_samples=10).num_draws == 10


def test_laplace_on_a_funnel_flags_itself_instead_of_raising_from_inside_pyro():
    # centred eight schools: the joint mode runs down the funnel (tau -> 0), and the Gaussian there is so wide
    # that some draws put tau past float range, where the model is undefined; the PSIS check gave those draws
    # to Pyro's validation (a bare ValueError) instead of a zero density
    (sigma, y), _ = make_eight_schools(None)

    def centred(sigma, y=None):
        mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(5.0))
        with pyro.plate("J", len(sigma)):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            return pyro.sample("obs", dist.Normal(theta, sigma), obs=y)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        zoo.fit(centred, (sigma, y), "laplace", seed=0)
    said = [str(w.message) for w in caught if issubclass(w.category, zoo.ZooWarning)]
    assert any("MAP: had not converged" in s for s in said) and any("Pareto k-hat" in s for s in said), said


def test_a_models_own_pyro_param_is_named_where_a_backend_holds_it_fixed():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 2, generator=g)
    y = x @ torch.tensor([1.0, 2.0]) + 0.5 * torch.randn(100, generator=g)

    def regression(x, y=None):
        s = pyro.param("s", torch.tensor(1.0), constraint=dist.constraints.positive)
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, s), obs=y)

    with pytest.warns(zoo.ZooWarning, match=r"pyro.param sites \['s'\] stay at their initial values"):
        zoo.fit(regression, (x, y), "laplace", seed=0)
    post = zoo.fit(regression, (x, y), "svi", seed=0)  # learns it, without a word
    assert abs(float(post.params["s"]) - 0.5) < 0.1


def test_laplace_refuses_a_centred_hierarchy_with_the_way_out():
    # Pyro's baseball example, partial pooling: the group scale runs to 0 at the joint mode
    hits = torch.tensor([18, 17, 16, 15, 14, 14, 13, 12, 11, 11, 10, 10, 10, 10, 10, 9, 8, 7.0])

    def pooled(at_bats, hits=None):
        loc = pyro.sample("loc", dist.Normal(-1.0, 1.0))
        scale = pyro.sample("scale", dist.HalfCauchy(1.0))
        with pyro.plate("players", at_bats.shape[0]):
            alpha = pyro.sample("alpha", dist.Normal(loc, scale))
            return pyro.sample("obs", dist.Binomial(at_bats, logits=alpha), obs=hits)

    with pytest.raises(zoo.ZooError, match="not positive definite.*use nuts, or make it non-centred"):
        zoo.fit(pooled, (torch.full_like(hits, 45.0), hits), "laplace", seed=0)


def test_svi_init_is_checked():
    x = torch.randn(20, 2)
    y = x.sum(-1)

    def regression(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)

    with pytest.raises(zoo.ZooError, match=r"init must be one of \('auto', 'prior', 'map'\)"):
        zoo.fit(regression, (x, y), "svi", init="mode", num_steps=5)

    def guide(x, y=None):
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample("w", dist.Normal(loc, 0.1).to_event(1))

    with pytest.raises(zoo.ZooError, match="a guide written by hand.*drop init='map'"):
        zoo.fit(regression, (x, y), "svi", guide=guide, init="map", num_steps=5)
