"""Simulation-based calibration (Talts et al. 2018) of the batched samplers on a small hierarchical model.

Each of R replications draws (mu, tau, theta) from the prior and data from the likelihood. The R data
sets go into one model with a plate over replications: the posterior factorises, so one fit samples all
R posteriors at once. For a correct sampler, the rank of each true mu among its (thinned) draws is
uniform over 0..L; a chi-square test over bins must not reject that at 1 %.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import zoo

REPLICATIONS, SCHOOLS, DRAWS_KEPT, BINS = 200, 4, 19, 10  # ranks 0..19: 20 values, two per bin


def replicated_schools(y):
    with pyro.plate("replication", y.shape[0], dim=-2):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        tau = pyro.sample("tau", dist.HalfNormal(1.0))
        with pyro.plate("school", y.shape[1], dim=-1):
            theta_raw = pyro.sample("theta_raw", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(mu + tau * theta_raw, 1.0), obs=y)


def simulate(generator):
    mu = torch.randn(REPLICATIONS, 1, generator=generator)
    tau = torch.randn(REPLICATIONS, 1, generator=generator).abs()
    theta = mu + tau * torch.randn(REPLICATIONS, SCHOOLS, generator=generator)
    return mu[:, 0], theta + torch.randn(REPLICATIONS, SCHOOLS, generator=generator)


def rank_statistic(draws: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """draws (n, R): thinned to DRAWS_KEPT per replication; returns the chi-square statistic and p-value."""
    thin = draws[torch.linspace(0, draws.shape[0] - 1, DRAWS_KEPT).round().long()]
    ranks = (thin < truth).sum(0)
    counts = torch.bincount(ranks * BINS // (DRAWS_KEPT + 1), minlength=BINS).double()
    expected = REPLICATIONS / BINS
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return chi2, float(stats.chi2.sf(chi2, BINS - 1))


@pytest.mark.slow
@pytest.mark.parametrize("backend, options", [("nuts", dict(num_chains=4)), ("chees", dict(num_chains=64))])
def test_ranks_of_the_truth_are_uniform(backend, options):
    mu, y = simulate(torch.Generator().manual_seed(0))
    post = zoo.fit(replicated_schools, (y,), backend, num_warmup=500, num_samples=200, seed=1, **options)
    draws = post.samples["mu"].reshape(-1, REPLICATIONS)  # (chain x draw, R)
    chi2, p = rank_statistic(draws, mu)
    print(f"SBC {backend}: chi-square {chi2:.2f} on {BINS - 1} dof, p = {p:.3f}")
    assert p > 0.01


def test_the_rank_statistic_rejects_a_biased_sampler():
    mu, _ = simulate(torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(2)
    prior = torch.randn(400, REPLICATIONS, generator=gen)  # the truth is a prior draw: exchangeable with these
    assert rank_statistic(prior, mu)[1] > 0.01
    shifted = mu + 0.5 + torch.randn(400, REPLICATIONS, generator=gen)  # draws centred off the truth
    assert rank_statistic(shifted, mu)[1] < 1e-6
