"""GLMs and the hierarchical regression against known answers: simulated truth, OLS and Fisher information."""

import math

import arviz as az
import pyro
import pytest
import torch
from pyro import poutine

import zoo
from zoo.inference._base import Problem
from zoo.inference.flat import decide_path
from zoo.inference.sites import Sites, is_sample

NUTS = dict(num_warmup=200, num_samples=300, num_chains=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core box two threads make each
    small op wait for the other (a 3x3 tril takes milliseconds): this file runs on one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- linear regression

ALPHA, BETA, NOISE = 0.3, torch.tensor([1.0, -0.5, 0.25]), 0.5


@pytest.fixture(scope="module")
def linear_data():
    gen = _generator(1)
    x = torch.randn(400, 3, generator=gen)
    y = ALPHA + x @ BETA + NOISE * torch.randn(400, generator=gen)
    return (x[:200], y[:200]), (x[200:], y[200:])


def _ols(x, y):
    """Least squares on [1, x] and its standard errors: the posterior under flat priors."""
    design = torch.cat([torch.ones(len(x), 1), x], 1)
    coef = torch.linalg.lstsq(design, y.unsqueeze(-1)).solution.squeeze(-1)
    resid = y - design @ coef
    s2 = float(resid.pow(2).sum()) / (len(x) - design.shape[1])
    return coef, (s2 * torch.linalg.inv(design.T @ design).diagonal()).sqrt()


LINEAR_CASES = [pytest.param("nuts", NUTS, id="nuts"),
                pytest.param("laplace", dict(num_steps=1000, lr=0.05), id="laplace")]


@pytest.mark.parametrize("backend, options", LINEAR_CASES)
def test_linear_regression_recovers_coefficients(linear_data, backend, options):
    (x, y), test = linear_data
    post = zoo.fit(zoo.load("linear-regression", data=(x, y)), (x, y), backend, seed=0, **options)
    draws = post.flat_samples()
    got = torch.cat([draws["alpha"].unsqueeze(-1), draws["beta"]], -1)
    mean, sd = got.mean(0), got.std(0)
    truth = torch.cat([torch.tensor([ALPHA]), BETA])
    assert ((mean - truth).abs() / sd).max() < 3.0  # the simulation's truth within 3 posterior sds
    ols, se = _ols(x, y)  # weak priors: the posterior is the OLS answer
    assert ((mean - ols).abs() / se).max() < 0.3
    assert ((sd - se).abs() / se).max() < 0.25
    assert abs(float(draws["sigma"].mean()) - NOISE) < 3 * float(draws["sigma"].std())
    metrics = post.evaluate(test)
    assert abs(metrics["rmse"] - NOISE) < 0.06
    best_ll = -0.5 * math.log(2 * math.pi * math.e * NOISE**2)  # -0.726: the noise's own entropy
    assert abs(metrics["test_ll"] - best_ll) < 0.1
    assert post.info["vectorized"] == "plate"


# ---------------------------------------------------------------- logistic and Poisson regression


def test_logistic_regression_accuracy_and_coefficients():
    gen = _generator(2)
    x = torch.randn(600, 2, generator=gen)
    truth = torch.tensor([0.5, 2.0, -2.0])
    y = torch.bernoulli(torch.sigmoid(truth[0] + x @ truth[1:]), generator=gen)
    train, test = (x[:300], y[:300].long()), (x[300:], y[300:])
    post = zoo.fit(zoo.load("logistic-regression", data=train), train, "nuts", seed=0,
                   num_warmup=150, num_samples=200, num_chains=1)
    draws = post.flat_samples()
    got = torch.cat([draws["alpha"].unsqueeze(-1), draws["beta"]], -1)
    assert ((got.mean(0) - truth).abs() / got.std(0)).max() < 3.0
    metrics = post.evaluate(test)
    bayes = float((((truth[0] + test[0] @ truth[1:]) > 0).float() == test[1]).float().mean())
    chance = max(float(test[1].mean()), 1 - float(test[1].mean()))
    assert chance < 0.65 and metrics["accuracy"] > 0.75 and metrics["accuracy"] > bayes - 0.04
    assert metrics["brier"] < 0.3 and metrics["nll"] < 0.45
    pred = post.predict(test[0])
    assert pred.probs.shape == (300, 2) and torch.allclose(pred.probs.sum(-1), torch.ones(300))


def test_poisson_regression_recovers_rate_coefficient():
    gen = _generator(3)
    x = torch.randn(200, 1, generator=gen)
    alpha, beta = 1.0, 0.7
    y = torch.poisson(torch.exp(alpha + beta * x[:, 0]), generator=gen).long()
    post = zoo.fit(zoo.load("poisson-regression", data=(x, y)), (x, y), "nuts", seed=0,
                   num_warmup=150, num_samples=200, num_chains=1)
    draws = post.flat_samples()
    got = torch.stack([draws["alpha"], draws["beta"][:, 0]], -1)
    truth = torch.tensor([alpha, beta])
    assert ((got.mean(0) - truth).abs() / got.std(0)).max() < 3.0
    design = torch.cat([torch.ones(200, 1), x], 1)  # asymptotic sds: the Fisher information at the truth
    fisher = design.T @ (torch.exp(design @ truth).unsqueeze(-1) * design)
    sd = torch.linalg.inv(fisher).diagonal().sqrt()
    assert ((got.std(0) - sd).abs() / sd).max() < 0.3
    pred = post.predict(x)
    assert pred.mean.shape == (200,) and bool((pred.mean > 0).all())


# ---------------------------------------------------------------- hierarchical regression

G, PER = 8, 15


@pytest.fixture(scope="module")
def hier_data():
    gen = _generator(4)
    group = torch.arange(G).repeat_interleave(PER)
    alpha = 1.0 + torch.randn(G, generator=gen)
    beta = 0.5 + torch.randn(G, 1, generator=gen)
    x = torch.randn(G * PER, 1, generator=gen)
    y = alpha[group] + (x * beta[group]).sum(-1) + torch.randn(G * PER, generator=gen)
    return (x, group, y), alpha


@pytest.fixture(scope="module")
def hier_fits(hier_data):
    data, _ = hier_data
    fits = {}
    for par in ("centered", "noncentered"):
        model = zoo.load("hierarchical-regression", data=data, parameterization=par)
        fits[par] = zoo.fit(model, data, "nuts", seed=0, num_warmup=150, num_samples=150, num_chains=1)
    return fits


def _group_intercepts(post):
    """(draws, G): a sample site when centred, a deterministic one when non-centred."""
    if "alpha" in post.samples:
        return post.flat_samples()["alpha"]
    return post.deterministic["alpha"].reshape(-1, G)


def _ess(draws):
    """Effective sample size of each column of ``draws`` (draws, G), one chain."""
    return torch.tensor([float(az.ess(draws[:, j].unsqueeze(0).numpy())) for j in range(draws.shape[1])])


def test_hierarchical_parameterizations_agree_with_each_other_and_the_truth(hier_data, hier_fits):
    _, truth = hier_data
    centred, noncentred = (_group_intercepts(hier_fits[p]) for p in ("centered", "noncentered"))
    assert "alpha_raw" in hier_fits["noncentered"].samples and "alpha" not in hier_fits["noncentered"].samples
    ess_c, ess_n = _ess(centred), _ess(noncentred)
    assert ess_c.min() > 20 and ess_n.min() > 20
    sd = centred.std(0)
    gap = (centred.mean(0) - noncentred.mean(0)).abs()
    mcse = (centred.var(0) / ess_c + noncentred.var(0) / ess_n).sqrt()  # Monte Carlo error of the gap
    assert (gap / mcse).max() < 4.0 and (gap / sd).max() < 0.6
    ratio = (noncentred.std(0) - sd).abs() / sd
    assert ratio.mean() < 0.2 and ratio.max() < 0.5
    for draws in (centred, noncentred):
        assert ((draws.mean(0) - truth).abs() / draws.std(0)).max() < 3.0


def test_hierarchical_to_arviz_has_a_group_dim_and_loo_runs(hier_data, hier_fits):
    data, _ = hier_data
    for post in hier_fits.values():
        idata = post.to_arviz(data)
        assert idata.posterior["alpha"].shape[-1] == G and idata.posterior["alpha"].dims[-1] == "group"
        assert idata.posterior["beta"].dims[-2:] == ("group", "feature")
        assert idata.log_likelihood["y"].shape == (1, 150, G * PER)
        loo = az.loo(idata)
        assert math.isfinite(loo.elpd_loo) and 5 < loo.p_loo < 30  # 21 parameters, partially pooled
        metrics = post.evaluate(data)
        assert 0.8 < metrics["rmse"] < 1.05  # the noise sd is 1


def test_hierarchical_predicts_per_group(hier_data, hier_fits):
    (x, group, _), truth = hier_data
    x0 = torch.zeros(G, 1)
    pred = hier_fits["centered"].predict((x0, torch.arange(G)))
    assert ((pred.mean - truth).abs() / pred.epistemic_std).max() < 3.0


# ---------------------------------------------------------------- the models' plumbing


def _small(name):
    x = torch.randn(24, 3)
    if name == "hierarchical-regression":
        return (x, torch.arange(24) % 4, torch.randn(24))
    if name == "logistic-regression":
        return (x, torch.randint(0, 2, (24,)))
    if name == "poisson-regression":
        return (x, torch.poisson(torch.ones(24)))
    return (x, torch.randn(24))


NAMES = ["linear-regression", "logistic-regression", "poisson-regression", "hierarchical-regression"]


@pytest.mark.parametrize("name", NAMES)
def test_cards_guides_config_and_vectorised_body(name):
    card = zoo.card(name)
    assert card.default_guide == "full-rank" and set(card.guides) == {"full-rank", "mean-field", "low-rank", "delta"}
    assert card.family == ("hierarchical" if name.startswith("hier") else "glm") and card.likelihood
    args = _small(name)
    zm = zoo.load(name, data=args)
    assert zoo.load(name, **zm.config).config == zm.config  # the config rebuilds the model
    model_trace = poutine.trace(zm.model).get_trace(*args)
    latent = {n for n, s in model_trace.nodes.items() if is_sample(s) and not s["is_observed"]}
    for guide in card.guides:
        pyro.clear_param_store()
        guide_trace = poutine.trace(zm.make_guide(guide)).get_trace(*args)
        for site in latent:
            assert guide_trace.nodes[site]["value"].shape == model_trace.nodes[site]["value"].shape
    sites = Sites.of(zm.model, args, init_loc_fn=zm.init_loc_fn)
    assert sites.subsamplable and sites.observed == ["y"]
    assert decide_path(Problem(zm.model, args, sites, 10, False, zm.init_loc_fn)) == "plate"  # broadcasts over draws


@pytest.mark.parametrize("name", NAMES)
def test_save_and_load_round_trip(name, tmp_path):
    args = _small(name)
    options = {"parameterization": "noncentered"} if name.startswith("hier") else {}
    post = zoo.fit(zoo.load(name, data=args, **options), args, "svi", num_steps=20, num_samples=50, seed=0)
    again = zoo.load_posterior(post.save(tmp_path / name))
    inputs = args[:-1] if len(args) > 2 else args[0]
    assert torch.allclose(again.predict(inputs).mean.float(), post.predict(inputs).mean.float())
    assert set(again.deterministic) == set(post.deterministic)


def test_hierarchical_noncentered_has_the_same_density_of_alpha():
    args = _small("hierarchical-regression")
    zm = zoo.load("hierarchical-regression", data=args, parameterization="noncentered")
    trace = poutine.trace(zm.model).get_trace(*args)
    assert trace.nodes["alpha"]["value"].shape == (4,) and trace.nodes["beta"]["value"].shape == (4, 3)
    mu, tau, raw = (trace.nodes[n]["value"] for n in ("mu_alpha", "tau_alpha", "alpha_raw"))
    assert torch.allclose(trace.nodes["alpha"]["value"], mu + tau * raw)


x24 = torch.randn(24, 3)
BAD = [
    ("linear-regression", {}, (x24[:, 0], torch.randn(24)), "2-D"),
    ("linear-regression", {}, (torch.randn(24, 2), torch.randn(24)), r"\(points, 3\)"),
    ("linear-regression", {}, (x24, torch.randn(24, 1)), "1-D"),
    ("linear-regression", {}, (x24, torch.randint(0, 3, (24,))), "floating point"),
    ("logistic-regression", {}, (x24, torch.randint(0, 3, (24,)) * 1.0), "0 or 1"),
    ("logistic-regression", {}, (x24, torch.rand(24)), "whole numbers"),
    ("poisson-regression", {}, (x24, -torch.ones(24)), "non-negative"),
    ("poisson-regression", {}, (x24, torch.full((24,), 0.5)), "whole numbers"),
    ("hierarchical-regression", {"num_groups": 4}, (x24, torch.arange(24) % 5, torch.randn(24)), r"\[0, 3\]"),
    ("hierarchical-regression", {"num_groups": 4}, (x24, (torch.arange(24) % 4) * 1.0, torch.randn(24)),
     "integer tensor"),
    ("hierarchical-regression", {"num_groups": 4}, x24, r"\(x, group, y\)"),
]


@pytest.mark.parametrize("name, options, data, message", BAD, ids=[f"{b[0]}-{b[3]}" for b in BAD])
def test_bad_input_is_a_clear_zoo_error(name, options, data, message):
    zm = zoo.load(name, **options, **({} if options else {"in_features": 3}))
    with pytest.raises(zoo.ZooError, match=message):
        zoo.fit(zm, data, "svi", num_steps=1)


def test_bad_builder_options():
    with pytest.raises(zoo.ZooError, match="num_groups"):
        zoo.load("hierarchical-regression")
    with pytest.raises(zoo.ZooError, match="parameterization"):
        zoo.load("hierarchical-regression", num_groups=3, parameterization="centred")
    with pytest.raises(zoo.ZooError, match="ids up to 4"):
        zoo.load("hierarchical-regression", data=(x24, torch.arange(24) % 5, torch.randn(24)), num_groups=3)
    with pytest.raises(zoo.ZooError, match="noncentered"):  # the centred density has no MAP
        zoo.fit(zoo.load("hierarchical-regression", num_groups=4), _small("hierarchical-regression"), "laplace")
    with pytest.raises(zoo.ZooError, match="prior_scale must be positive"):
        zoo.load("linear-regression", in_features=2, prior_scale=0.0)
    with pytest.raises(zoo.ZooError, match="0 or 1"):
        zoo.load("logistic-regression", data=(x24, torch.randint(0, 3, (24,))))
