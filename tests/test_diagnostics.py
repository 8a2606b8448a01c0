"""Posterior.diagnose against known answers: exact and bad approximations, agreeing and disagreeing chains."""

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from zoo.inference.arviz import pareto_k
from zoo.inference.diagnostics import diagnose

NOISE = 0.5


def linear(x, y=None):
    """Bayesian linear regression with a known noise: its posterior is Gaussian, in closed form."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, NOISE), obs=y)


def _regression(collinear: bool):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, generator=gen)
    if collinear:
        x[:, 1] = x[:, 0] + 0.05 * x[:, 1]
    return x, x @ torch.tensor([1.0, -0.5]) + NOISE * torch.randn(40, generator=gen)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These fits are tiny: on a busy machine torch's thread pool costs more than it saves (a 2 x 2 tril
    in the full-rank guide takes milliseconds with two threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """Nearly independent columns: a round posterior."""
    return _regression(collinear=False)


@pytest.fixture(scope="module")
def collinear():
    """Two almost equal columns: the posterior of (w0, w1) has correlation about -0.999."""
    return _regression(collinear=True)


@pytest.fixture(scope="module")
def nuts(data):
    return zoo.fit(linear, data, "nuts", num_warmup=200, num_chains=2, num_samples=500, seed=0)


def _refit(post, samples, **changes):
    """``post`` with other draws (and sample stats or options)."""
    kwargs = dict(method=post.method, sites=post.sites, sample_stats=post.sample_stats, options=post.options)
    return zoo.Posterior(post.model, samples, **{**kwargs, **changes})


def test_full_rank_svi_on_a_gaussian_posterior_passes_psis(data):
    post = zoo.fit(linear, data, "svi", guide="full-rank", num_steps=600, lr=0.05, lr_decay=0.01,
                   num_samples=2000, seed=0)  # k-hat -0.13 to 0.18 over seeds 0-4
    d = post.diagnose()
    assert d.pareto_k < 0.5 and d.ok and not d.warnings
    assert d.psis_ess > 0.8 * 2000  # q is close to p: the weights are nearly equal
    assert d.rows == [] and d.pareto_k_reason is None
    assert any("no R-hat" in n for n in d.notes)


def test_laplace_is_exact_for_a_gaussian_posterior(data):
    d = zoo.fit(linear, data, "laplace", num_steps=500, lr=0.05, tune_prior=False, seed=0).diagnose()
    assert d.pareto_k < 0.5 and d.ok


@pytest.mark.parametrize("case", ["mean-field-on-correlated", "five-steps"])
def test_a_bad_approximation_fails_psis(data, collinear, case):
    if case == "five-steps":  # from the prior's median (from the Laplace start five steps are already good)
        post = zoo.fit(linear, data, "svi", guide="full-rank", num_steps=5, num_samples=1000, seed=0, init="prior")
    else:  # mean-field cannot hold the correlation: q is far too narrow along the ridge
        post = zoo.fit(linear, collinear, "svi", guide="mean-field", num_steps=300, lr=0.05, lr_decay=0.01,
                       num_samples=1000, seed=0)
    d = post.diagnose()
    assert d.pareto_k > 0.7 and not d.ok
    assert any("do not trust the approximation" in w and "Yao, Vehtari, Simpson & Gelman 2018" in w
               for w in d.warnings)
    assert str(d).endswith("NOT OK")


def test_a_point_mass_guide_has_no_k_hat(data):
    d = zoo.fit(linear, data, "svi", guide="delta", num_steps=50, num_samples=100, seed=0).diagnose()
    assert d.pareto_k is None and "point mass" in d.pareto_k_reason
    assert "unavailable (guide is a point mass" in str(d)


def _normal_log_ratios(variance, size=4000):
    """log p / q at draws of q = N(0, 1) for p = N(0, variance): a Pareto tail of shape 1 - 1 / variance."""
    x = np.random.default_rng(0).normal(size=size)
    return -0.5 * x**2 / variance - 0.5 * math.log(variance) + 0.5 * x**2


@pytest.mark.parametrize("variance, k", [(1.25, 0.2), (10.0, 0.9)])
def test_pareto_k_of_known_tails(variance, k):
    assert pareto_k(_normal_log_ratios(variance))[0] == pytest.approx(k, abs=0.1)


def test_k_hat_between_half_and_0_7_is_a_caution_only(nuts):
    ratios = torch.tensor(_normal_log_ratios(2.5)).reshape(1, -1)  # k = 0.6
    samples = {"w": torch.randn(1, ratios.shape[1], 2)}
    d = _refit(nuts, samples, method="svi", sample_stats={"log_ratio": ratios}).diagnose()
    assert 0.5 < d.pareto_k <= 0.7 and d.ok
    assert len(d.warnings) == 1 and d.warnings[0].startswith("caution: Pareto k-hat")
    ratios[0, 7] = math.nan
    d = _refit(nuts, samples, method="svi", sample_stats={"log_ratio": ratios}).diagnose()
    assert d.pareto_k == math.inf and not d.ok and "nan or +inf at 1 of 4000 draws" in d.warnings[0]


def test_nuts_on_an_easy_model_converges(nuts):
    d = diagnose(nuts)
    assert [r.name for r in d.rows] == ["w[0]", "w[1]"]
    assert all(r.r_hat < 1.01 for r in d.rows)
    assert all(min(r.ess_bulk, r.ess_tail) > 200 for r in d.rows)
    assert d.divergences == 0 and d.max_tree_depth == 10 and d.max_tree_depth_hits < 0.05
    assert d.ok and not d.warnings and d.pareto_k is None


def test_the_report_is_a_table(nuts):
    lines = str(nuts.diagnose()).splitlines()
    assert lines[0] == "nuts, 2 chains x 500 draws"
    assert lines[1].split() == ["param", "r_hat", "ess_bulk", "ess_tail"]
    assert lines[2].split()[0] == "w[0]" and lines[3].split()[0] == "w[1]"
    assert lines[4].split() == ["divergences:", "0", "tree", "depth", "at", "max", "(10):", "0.0%"]
    assert lines[-1] == "OK"


def test_chains_that_disagree_fail_r_hat(nuts):
    w = nuts.samples["w"].clone()
    w[1] += 5 * w.std((0, 1))  # chain 1 five posterior sds away
    d = _refit(nuts, {"w": w}).diagnose()
    assert all(r.r_hat > 1.01 for r in d.rows) and not d.ok
    assert any(w.startswith("r_hat > 1.01 for w[0]") and "chains disagree" in w for w in d.warnings)


def test_a_stuck_chain_has_infinite_r_hat_and_no_numpy_warning(nuts):
    w = nuts.samples["w"].clone()
    w[1] = w[1, :1]  # chain 1 never moves
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d = _refit(nuts, {"w": w}).diagnose()
    assert all(r.r_hat == math.inf for r in d.rows) and not d.ok
    assert any("chain 1 never moved" in w for w in d.warnings)
    assert "inf" in str(d)



def test_entries_fixed_by_the_support_are_not_a_stuck_chain(nuts):
    # LKJCholesky's factor: L[0,0] = 1 and L[0,1] = 0 in every draw; only L[1,0] and L[1,1] move
    gen = torch.Generator().manual_seed(0)
    lower = torch.rand(2, 500, generator=gen) * 2 - 1
    factor = torch.zeros(2, 500, 2, 2)
    factor[..., 0, 0], factor[..., 1, 0], factor[..., 1, 1] = 1.0, lower, (1 - lower**2).sqrt()
    d = _refit(nuts, {"L": factor}, sample_stats={}).diagnose()
    assert [r.label for r in d.rows] == ["L[1,0]", "L[1,1]"] and d.ok, str(d)
    factor[1, :, 1, 0] = factor[1, 0, 1, 0]  # a chain stuck in a coordinate that moves elsewhere is still caught
    assert any("chain 1 never moved" in w for w in _refit(nuts, {"L": factor}, sample_stats={}).diagnose().warnings)

def test_big_sites_get_one_row_each(nuts):
    gen = torch.Generator().manual_seed(0)
    samples = {"weights": torch.randn(2, 500, 50, 40, generator=gen), "bias": torch.randn(2, 500, 3, generator=gen)}
    d = _refit(nuts, samples, sample_stats={}).diagnose()
    assert [r.label for r in d.rows] == ["weights [1,000 of 2,000]", "bias[0]", "bias[1]", "bias[2]"]
    big = d.rows[0]
    assert big.entries == 2000 and big.checked == 1000
    assert 1.0 < big.r_hat < 1.02 and big.ess_bulk > 500  # worst over 1,000 iid entries
    assert d.divergences is None and d.max_tree_depth_hits is None


def test_sampler_troubles_are_named_with_their_fix(nuts):
    chains, draws = 2, 500
    ar = torch.zeros(chains, draws, 1)  # an AR(1) chain with coefficient 0.99: ESS of a few dozen
    noise = torch.randn(chains, draws, 1, generator=torch.Generator().manual_seed(0))
    for t in range(1, draws):
        ar[:, t] = 0.99 * ar[:, t - 1] + noise[:, t]
    stats = {"diverging": torch.zeros(chains, draws, dtype=torch.bool), "tree_depth": torch.full((chains, draws), 6)}
    stats["diverging"][0, :3] = True
    stats["tree_depth"][:, :100] = 8
    d = _refit(nuts, {"sigma": ar[..., 0]}, sample_stats=stats, options={"max_tree_depth": 8}).diagnose()
    assert d.divergences == 3 and d.max_tree_depth == 8 and d.max_tree_depth_hits == pytest.approx(0.2)
    text = "\n".join(d.warnings)
    assert "3 divergent transitions" in text and "raise target_accept (now 0.8)" in text
    assert "20.0% of draws stopped at the maximum tree depth (8)" in text
    assert "raise max_tree_depth or reparameterise" in text
    assert "ESS below 200 (100 per chain" in text and not d.ok
