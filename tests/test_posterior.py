import math

import arviz as az
import numpy as np
import pyro
import pytest
import torch

import zoo


@pytest.fixture(scope="module")
def data():
    return zoo.datasets.load("yacht", split=0)


@pytest.fixture(scope="module")
def fits(data):
    zm = zoo.load("bnn", data=data, hidden=[10])
    return {
        "svi": zoo.fit(zm, data.train, "svi", num_steps=300, num_samples=200, seed=0),
        # the network at each draw (the "nn" predictive, which _by_hand recomputes) over a diagonal
        # (one round of 500 Adam steps: the groups and shapes need a Gaussian, not the best one)
        "laplace": _quietly(zoo.fit, zm, data.train, "laplace", num_steps=500, prior_rounds=1, num_samples=200,
                            seed=0, hessian="diag", predictive="nn"),
        "nuts": zoo.fit(zm, data.train, "nuts", num_warmup=30, num_chains=2, max_tree_depth=5,
                        num_samples=30, seed=0),
    }


def _quietly(fn, *args, **kwargs):
    """The MAP of this small net creeps on (its noise precision keeps growing): not this test's topic."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zoo.ZooWarning)
        return fn(*args, **kwargs)


@pytest.mark.parametrize("backend", ["svi", "laplace", "nuts"])
def test_arviz_groups_and_shapes(fits, data, backend):
    post = fits[backend]
    idata = post.to_arviz(data.test)
    chains, draws, n = post.num_chains, post.num_draws, len(data.test)
    assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data", "sample_stats"} <= set(
        idata.groups())
    assert idata.posterior["w0"].shape == (chains, draws, 10, 6)
    assert idata.posterior["precision"].dims == ("chain", "draw")
    assert idata.log_likelihood["y"].shape == (chains, draws, n)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "obs")
    np.testing.assert_allclose(idata.observed_data["y"].values, data.test.y_original.numpy(), rtol=1e-5)
    loo = az.loo(idata)
    # the log-likelihood group is log N(y; f_s, sigma_s) in original units, by hand from the draws
    f, sigma = _by_hand(post, data.test.x, data)
    by_hand = torch.distributions.Normal(f, sigma).log_prob(data.test.y_original).reshape(chains, draws, n)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, by_hand.numpy(), rtol=1e-4, atol=1e-4)
    # elpd from ArviZ and test_ll from evaluate are the same log-mean-exp, summed vs averaged
    test_ll = post.evaluate(data.test)["test_ll"]
    lppd = float(np.sum(np.log(np.mean(np.exp(idata.log_likelihood["y"].values), axis=(0, 1)))))
    assert lppd / n == pytest.approx(test_ll, abs=1e-4)
    # leaving a point out costs: 0 < p_loo = lppd - elpd_loo, fewer effective parameters than the 82 there are
    assert 0 < lppd - float(loo.elpd_loo) < 82
    summary = az.summary(idata, var_names=["precision"])
    assert summary.loc["precision", "ess_bulk"] > 0


def test_nuts_keeps_sampler_stats(fits, data):
    post = fits["nuts"]
    stats = post.to_arviz().sample_stats
    for name in ("diverging", "tree_depth", "step_size", "acceptance_rate", "lp"):
        assert stats[name].shape == (2, 30)
    assert 1 <= int(stats["tree_depth"].max()) <= 5
    assert 0 <= float(stats["acceptance_rate"].min()) <= float(stats["acceptance_rate"].max()) <= 1
    assert (stats["step_size"].values == stats["step_size"].values[:, :1]).all()  # adaptation ended at warmup
    # lp is the log density of the unconstrained draw: log p(w, precision, y) + log |d precision / d log precision|
    draws = post.flat_samples()
    lp = []
    for s in range(60):
        values = {k: v[s] for k, v in draws.items()}
        trace = pyro.poutine.trace(pyro.poutine.condition(post.model.model, values)).get_trace(*data.train.args)
        lp.append(float(trace.log_prob_sum()) + float(values["precision"].log()))
    np.testing.assert_allclose(stats["lp"].values.ravel(), lp, rtol=1e-4)


def test_compare_across_backends(fits, data):
    table = az.compare({b: p.to_arviz(data.test) for b, p in fits.items()})
    assert set(table.index) == {"svi", "laplace", "nuts"} and table["rank"].min() == 0


def _by_hand(post, x, data):
    """f and sigma at every draw in original units, from the draws and the MLP written out here."""
    draws = post.flat_samples()
    h = x
    for i in range(2):
        h = h @ draws[f"w{i}"].transpose(-1, -2) + draws[f"b{i}"].unsqueeze(-2)
        h = torch.relu(h) if i == 0 else h
    f = h[..., 0] * data.train.y_std + data.train.y_mean
    return f, (draws["precision"].rsqrt() * data.train.y_std).unsqueeze(-1)


def test_predict_splits_epistemic_and_aleatoric(fits, data):
    post = fits["svi"]
    pred = post.predict(data.test.x)
    assert pred.mean.shape == pred.std.shape == (len(data.test),)
    assert pred.samples.shape == (200, len(data.test))
    f, sigma = _by_hand(post, data.test.x, data)
    torch.testing.assert_close(pred.mean, f.mean(0), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(pred.epistemic_std, f.std(0, correction=0), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(pred.aleatoric_std, (sigma**2).mean(0).sqrt().expand_as(f[0]), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(pred.std**2, pred.epistemic_std**2 + pred.aleatoric_std**2)
    # the predictive samples are draws of y: their spread is the total sd
    assert float((pred.samples.std(0) / pred.std).mean()) == pytest.approx(1.0, abs=0.05)


def test_evaluate_matches_hand_computation(fits, data):
    post = fits["laplace"]
    metrics = post.evaluate(data.test)
    f, sigma = _by_hand(post, data.test.x, data)
    y = data.test.y_original
    rmse = float(((f.mean(0) - y) ** 2).mean().sqrt())
    log_lik = torch.distributions.Normal(f, sigma).log_prob(y)  # (draws, points), original units
    test_ll = float((torch.logsumexp(log_lik, 0) - math.log(len(f))).mean())
    assert metrics["rmse"] == pytest.approx(rmse, rel=1e-4)
    assert metrics["test_ll"] == pytest.approx(test_ll, abs=1e-4)


def test_save_and_load_round_trip(fits, data, tmp_path):
    for backend, post in fits.items():
        folder = post.save(tmp_path / backend)
        back = zoo.load_posterior(folder)
        assert back.method == backend and back.model.config == post.model.config
        torch.testing.assert_close(back.predict(data.test.x).mean, post.predict(data.test.x).mean)
        assert back.evaluate(data.test)["test_ll"] == pytest.approx(post.evaluate(data.test)["test_ll"])
        assert az.from_netcdf(folder / "posterior.nc").posterior["w0"].shape[-2:] == (10, 6)


def test_minibatch_svi_scales_the_likelihood(data):
    zm = zoo.load("bnn", data=data, hidden=[10])
    post = zoo.fit(zm, data.train, "svi", num_epochs=100, batch_size=32, num_samples=100, seed=0)
    full = zoo.fit(zm, data.train, "svi", num_steps=900, num_samples=100, seed=0)
    assert post.info["num_steps"] == 100 * 9 and post.info["batch_size"] == 32
    # a minibatch's likelihood is scaled by N / B: the fit matches the full-batch one of as many steps (an
    # unscaled likelihood would weigh the prior 9 times more, and the noise precision would come out far lower)
    mini, whole = post.evaluate(data.test), full.evaluate(data.test)
    assert mini["rmse"] < 1.5 * whole["rmse"] and mini["rmse"] < 5  # the target's sd is about 15
    ratio = float(post.flat_samples()["precision"].mean() / full.flat_samples()["precision"].mean())
    assert 0.5 < ratio < 2


def test_minibatch_fit_never_runs_the_model_on_all_the_data():
    """Pyro's autoguides trace the model once to find its sites, with the plate's subsample hidden: on a
    minibatched fit the zoo runs that trace on one minibatch (it once cost a forward pass over all the data)."""
    seen = []

    def model(x, y=None):
        w = pyro.sample("w", pyro.distributions.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("data", x.shape[0]) as idx:
            seen.append((len(idx), torch.is_grad_enabled()))  # the fit's diagnostics run on all the data
            return pyro.sample("y", pyro.distributions.Normal(x[idx] @ w, 1.0), obs=None if y is None else y[idx])

    x = torch.randn(500, 2)
    y = x @ torch.tensor([1.0, -1.0]) + torch.randn(500)
    for guide in ("mean-field", "delta"):
        seen.clear()
        zoo.fit(zoo.ZooModel(model), (x, y), "svi", guide=guide, num_steps=5, batch_size=20, num_samples=10,
                progress=False)
        assert (500, True) not in seen and (20, True) in seen, (guide, sorted(set(seen)))


def test_classifier_metrics():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 2, generator=gen)
    y = (x[:, 0] + x[:, 1] > 0).long()
    zm = zoo.load("bnn-classifier", data=(x, y), hidden=[8])
    post = zoo.fit(zm, (x, y), "svi", num_steps=500, lr=0.03, num_samples=100, seed=0)
    m = post.evaluate((x, y))
    assert set(m) == {"accuracy", "nll", "ece", "brier"} and m["accuracy"] > 0.9
    idata = post.to_arviz((x, y))
    assert idata.log_likelihood["y"].shape == (1, 100, 200)


def test_vectorised_particles_match_looped_elbo(data):
    import pyro
    from pyro.infer import Trace_ELBO

    zm = zoo.load("bnn", data=data, hidden=[10])
    guide = zm.make_guide()
    x, y = data.train.args
    pyro.set_rng_seed(0)
    looped = Trace_ELBO(num_particles=2000).loss(zm.model, guide, x, y)
    pyro.set_rng_seed(0)
    vectorised = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1).loss(
        zm.model, guide, x, y)
    assert vectorised == pytest.approx(looped, rel=0.01)


@pytest.mark.parametrize("guide", ["mean-field", "mc-dropout"])
def test_jit_svi_matches_eager(data, guide):
    zm = zoo.load("bnn", data=data, hidden=[10])
    results = [zoo.fit(zm, data.train, "svi", guide=guide, num_steps=300, num_samples=200, seed=0, jit=jit)
               for jit in (False, True)]
    eager, jitted = (r.evaluate(data.test)["test_ll"] for r in results)
    assert jitted == pytest.approx(eager, abs=0.3)
    minibatch = [zoo.fit(zm, data.train, "svi", guide=guide, num_epochs=30, batch_size=32, jit=jit,
                         num_samples=200, seed=0).evaluate(data.test)["test_ll"] for jit in (False, True)]
    assert minibatch[1] == pytest.approx(minibatch[0], abs=0.5)


def test_parallel_chains_in_forked_processes():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen)
    y = x @ torch.tensor([1.0, -1.0]) + 0.3 * torch.randn(30, generator=gen)
    zm = zoo.load("bnn", in_features=2, hidden=[], noise_scale=0.3)  # Bayesian linear regression
    post = zoo.fit(zm, (x, y), "pyro-nuts", num_warmup=100, num_chains=2, parallel=True, num_samples=100, seed=0)
    assert post.info["parallel_chains"] and post.num_chains == 2
    w = post.samples["w0"]
    assert not torch.equal(w[0], w[1])  # the chains were seeded apart
    torch.testing.assert_close(w.mean((0, 1)).squeeze(), torch.tensor([1.0, -1.0]), atol=0.2, rtol=0)
    # each chain is seeded from the caller's stream, so forking does not change the draws
    sequential = zoo.fit(zm, (x, y), "pyro-nuts", num_warmup=100, num_chains=2, parallel=False, num_samples=100, seed=0)
    torch.testing.assert_close(sequential.samples["w0"], w)


def test_a_chain_whose_process_dies_is_an_error_not_a_hang(monkeypatch):
    import os

    from zoo.inference import mcmc

    worker = mcmc._chain_worker

    def dies(backend, problem, chain, seed, queue):
        if chain == 1:
            os._exit(3)  # as if killed for memory: no report, no exception
        worker(backend, problem, chain, seed, queue)

    monkeypatch.setattr(mcmc, "_chain_worker", dies)
    x, y = torch.randn(20, 2), torch.randn(20)
    zm = zoo.load("bnn", in_features=2, hidden=[], noise_scale=1.0)
    with pytest.raises(zoo.ZooError, match=r"chain 1 died in its process \(exit code 3\)"):
        zoo.fit(zm, (x, y), "pyro-nuts", num_warmup=20, num_chains=2, parallel=True, num_samples=20, seed=0)
