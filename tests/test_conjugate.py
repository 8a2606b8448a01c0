"""Every backend against the closed-form posterior of a conjugate Bayesian linear regression."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo

NOISE, PRIOR = 0.5, 1.0


@pytest.fixture(scope="module")
def linear_model():
    @zoo.register_model("test-conjugate-linear", task="regression", likelihood="Normal(x w, 0.5)")
    def build(prior_scale: float = PRIOR):
        def model(x, y=None):
            w = pyro.sample("w", dist.Normal(0.0, prior_scale).expand([x.shape[-1]]).to_event(1))
            with pyro.plate("data", x.shape[0]):
                return pyro.sample("y", dist.Normal(x @ w, NOISE), obs=y)

        return model

    yield zoo.load("test-conjugate-linear")
    zoo.unregister_model("test-conjugate-linear")


@pytest.fixture(scope="module")
def problem():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, generator=gen)
    y = x @ torch.tensor([1.0, -0.5]) + NOISE * torch.randn(40, generator=gen)
    precision = x.T @ x / NOISE**2 + torch.eye(2) / PRIOR**2
    cov = torch.linalg.inv(precision)
    return (x, y), cov @ x.T @ y / NOISE**2, cov.diagonal().sqrt()


# backend, options, tolerance on the mean (in exact sds), relative tolerance on the sd
CASES = [
    ("svi", dict(guide="full-rank", num_steps=2000, lr=0.05, lr_decay=0.01, num_samples=4000), 0.2, 0.12),
    ("laplace", dict(curvature="exact", num_steps=1500, lr=0.05, tune_prior=False, num_samples=4000),
     0.05, 0.06),
    ("nuts", dict(num_warmup=200, num_chains=4, num_samples=400), 0.2, 0.15),
    ("nuts-dense", dict(num_warmup=200, num_chains=4, num_samples=400, dense_mass=True), 0.2, 0.15),
    ("chees", dict(num_warmup=300, num_chains=32, num_samples=100), 0.2, 0.15),
    ("chees-dense", dict(num_warmup=300, num_chains=32, num_samples=100, dense_mass=True), 0.2, 0.15),
    ("pyro-nuts", dict(num_warmup=200, num_chains=2, num_samples=400), 0.25, 0.2),
]


@pytest.mark.parametrize("backend, options, mean_tol, sd_tol", CASES, ids=[c[0] for c in CASES])
def test_backend_matches_exact_posterior(linear_model, problem, backend, options, mean_tol, sd_tol):
    data, mean, sd = problem
    post = zoo.fit(linear_model, data, backend.removesuffix("-dense"), seed=0, **options)
    draws = post.flat_samples()["w"]
    assert ((draws.mean(0) - mean).abs() / sd).max() < mean_tol
    assert ((draws.std(0) - sd).abs() / sd).max() < sd_tol


def test_laplace_evidence_is_exact_for_a_gaussian_model(linear_model, problem):
    (x, y), _, _ = problem
    post = zoo.fit(linear_model, (x, y), "laplace", curvature="exact", tune_prior=False,
                   num_steps=1500, lr=0.05, seed=0)
    marginal = dist.MultivariateNormal(torch.zeros(40), x @ x.T * PRIOR**2 + NOISE**2 * torch.eye(40))
    assert post.info["log_marginal_likelihood"] == pytest.approx(float(marginal.log_prob(y)), abs=1e-2)


def test_pyro_nuts_jit_draws_equal_eager_draws(linear_model, problem):
    """TorchScript traces the same log density: with one seed the chains are the same chain."""
    data, _, _ = problem
    eager, traced = (zoo.fit(linear_model, data, "pyro-nuts", num_warmup=50, num_samples=50, num_chains=1, seed=3,
                             jit=jit).flat_samples()["w"] for jit in (False, True))
    assert torch.allclose(eager, traced, atol=1e-4)


def test_svi_starts_at_the_laplace_approximation(linear_model, problem):
    """init='auto' puts a model's autoguide at the MAP with the curvature's scales: for a Gaussian posterior
    that is the exact posterior (full-rank) or its conditional sds (mean-field), before any step moves it."""
    (x, y), mean, _ = problem
    cov = torch.linalg.inv(x.T @ x / NOISE**2 + torch.eye(2) / PRIOR**2)
    still = dict(num_steps=1, lr=1e-9, num_samples=10, seed=0)  # one step of Adam moves a parameter by ~lr
    full = zoo.fit(linear_model, (x, y), "svi", guide="full-rank", **still)
    assert full.info["init"] == "map"
    loc, scale, tril = (full.params[f"AutoMultivariateNormal.{k}"] for k in ("loc", "scale", "scale_tril"))
    factor = scale.unsqueeze(-1) * tril
    torch.testing.assert_close(loc, mean, rtol=1e-3, atol=1e-4)  # float32 search: 1e-3 of an sd
    torch.testing.assert_close(factor @ factor.T, cov, rtol=1e-3, atol=1e-7)
    field = zoo.fit(linear_model, (x, y), "svi", guide="mean-field", **still)
    torch.testing.assert_close(field.params["AutoNormal.scales.w"], torch.linalg.inv(cov).diagonal().rsqrt(),
                               rtol=1e-3, atol=1e-7)
    prior = zoo.fit(linear_model, (x, y), "svi", guide="mean-field", init="prior", **still)
    assert prior.info["init"] == "prior" and (prior.params["AutoNormal.locs.w"] - mean).abs().max() > 0.1
