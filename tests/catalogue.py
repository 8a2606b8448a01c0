"""Pyro models written the ordinary way, as a user would write them, with data simulated from known values.

Each entry: a model ``model(*inputs, *observations)``, a data maker returning (train, test) tuples of the
model's arguments, the true value of one scalar parameter to recover, and the backends it suits.
Nothing here is shaped for the zoo: ``x @ w`` does not broadcast over a batch of draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import OrderedTransform


@dataclass
class Entry:
    name: str
    model: object
    make: object  # seed -> (train args, test args)
    truth: tuple[str, float] | None = None  # a scalar site (or a site[index]) and its true value
    backends: tuple[str, ...] = ("svi", "laplace", "nuts")
    sites: tuple[str, ...] = field(default_factory=tuple)  # observed sites, when more than one


def _x(n, d, gen):
    return torch.randn(n, d, generator=gen)


def linear(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 5.0).expand([x.shape[-1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


def make_linear(gen):
    x = _x(80, 3, gen)
    y = x @ torch.tensor([1.5, -0.5, 0.0]) + 0.5 * torch.randn(80, generator=gen)
    return (x[:60], y[:60]), (x[60:], y[60:])


def logistic(x, y=None):
    b = pyro.sample("b", dist.Normal(0.0, 2.5))
    w = pyro.sample("w", dist.Normal(0.0, 2.5).expand([x.shape[-1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=b + x @ w), obs=y)


def make_logistic(gen):
    x = _x(200, 2, gen)
    y = torch.bernoulli(torch.sigmoid(-0.5 + x @ torch.tensor([2.0, -1.0])), generator=gen)
    return (x[:150], y[:150]), (x[150:], y[150:])


def poisson(x, y=None):
    b = pyro.sample("b", dist.Normal(0.0, 2.0))
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Poisson((b + x @ w).exp()), obs=y)


def make_poisson(gen):
    x = 0.5 * _x(150, 2, gen)
    y = torch.poisson((1.0 + x @ torch.tensor([0.8, -0.4])).exp(), generator=gen)
    return (x[:100], y[:100]), (x[100:], y[100:])


def _groups(gen, num_groups=8, per_group=12, tau=1.0, mu=2.0):
    group = torch.arange(num_groups).repeat_interleave(per_group)
    a = mu + tau * torch.randn(num_groups, generator=gen)
    x = torch.randn(group.shape[0], generator=gen)
    y = a[group] + 0.7 * x + 0.5 * torch.randn(group.shape[0], generator=gen)
    test = torch.arange(group.shape[0]) % 4 == 0
    return (x[~test], group[~test], y[~test]), (x[test], group[test], y[test])


def varying_intercepts(x, group, y=None, num_groups=8):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(2.0))
    with pyro.plate("group", num_groups):
        a = pyro.sample("a", dist.Normal(mu, tau))
    b = pyro.sample("b", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(a[group] + b * x, sigma), obs=y)


def varying_intercepts_noncentred(x, group, y=None, num_groups=8):
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfNormal(2.0))
    with pyro.plate("group", num_groups):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        a = pyro.deterministic("a", mu + tau * z)
    b = pyro.sample("b", dist.Normal(0.0, 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(a[group] + b * x, sigma), obs=y)


def nested(y=None):
    """Repeated measurements (rows) of 5 units (columns): two nested plates, observations (R, 5)."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    with pyro.plate("unit", 5, dim=-1):
        theta = pyro.sample("theta", dist.Normal(mu, 1.0))
        with pyro.plate("data", 20 if y is None else y.shape[0], dim=-2):
            return pyro.sample("y", dist.Normal(theta, 0.5), obs=y)


def make_nested(gen):
    theta = 1.0 + torch.randn(5, generator=gen)
    y = theta + 0.5 * torch.randn(28, 5, generator=gen)
    return (y[:20],), (y[20:],)


def two_outcomes(x, y=None, z=None):
    w = pyro.sample("w", dist.Normal(0.0, 2.0).expand([x.shape[-1]]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        f = x @ w
        pyro.sample("y", dist.Normal(f, sigma), obs=y)
        return pyro.sample("z", dist.Bernoulli(logits=2.0 * f), obs=z)


def make_two_outcomes(gen):
    x = _x(120, 2, gen)
    f = x @ torch.tensor([1.0, -1.0])
    y = f + 0.3 * torch.randn(120, generator=gen)
    z = torch.bernoulli(torch.sigmoid(2.0 * f), generator=gen)
    return (x[:90], y[:90], z[:90]), (x[90:], y[90:], z[90:])


def with_deterministic(x, y=None):
    log_sigma = pyro.sample("log_sigma", dist.Normal(0.0, 1.0))
    sigma = pyro.deterministic("sigma", log_sigma.exp())
    w = pyro.sample("w", dist.Normal(0.0, 5.0).expand([x.shape[-1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


def flat_prior(x, y=None):
    """Stan's default: no prior statement, a flat density over the support."""
    beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (x.shape[-1],)))
    sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ beta, sigma), obs=y)


def ordinal(x, y=None):
    """Ordered logistic regression: cutpoints through an ordered transform."""
    w = pyro.sample("w", dist.Normal(0.0, 2.0).expand([x.shape[-1]]).to_event(1))
    cut = pyro.sample("cutpoints", dist.TransformedDistribution(
        dist.Normal(0.0, 3.0).expand([2]).to_event(1), OrderedTransform()))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.OrderedLogistic(x @ w, cut), obs=y)


def make_ordinal(gen):
    x = _x(200, 2, gen)
    u = torch.rand(200, generator=gen)
    latent = x @ torch.tensor([1.5, -1.0]) + u.log() - (-u).log1p()  # standard logistic noise
    y = (latent > -1.0).long() + (latent > 1.0).long()
    return (x[:150], y[:150].float()), (x[150:], y[150:].float())


def softmax(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 2.0).expand([3, x.shape[-1]]).to_event(2))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Categorical(logits=x @ w.T), obs=y)


def make_softmax(gen):
    x = _x(180, 2, gen)
    w = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [-1.0, -1.5]])
    y = torch.distributions.Categorical(logits=x @ w.T).sample()
    return (x[:140], y[:140]), (x[140:], y[140:])


def binomial(trials, x, y=None):
    b = pyro.sample("b", dist.Normal(0.0, 2.0))
    w = pyro.sample("w", dist.Normal(0.0, 2.0))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Binomial(total_count=trials, logits=b + w * x), obs=y)


def make_binomial(gen):
    x = torch.randn(60, generator=gen)
    trials = torch.randint(5, 30, (60,), generator=gen).float()
    y = torch.binomial(trials, torch.sigmoid(0.3 + 1.2 * x), generator=gen)
    return (trials[:45], x[:45], y[:45]), (trials[45:], x[45:], y[45:])


def keyword_data(x, y=None, *, scale=1.0):
    """A model with a keyword option beside its data; data are given to fit by name."""
    w = pyro.sample("w", dist.Normal(0.0, scale).expand([x.shape[-1]]).to_event(1))
    with pyro.plate("data", x.shape[0]):
        return pyro.sample("y", dist.Normal(x @ w, 0.5), obs=y)


def eight_schools(sigma, y=None):
    """Rubin's eight schools, non-centred, as NumPyro's getting-started guide writes it (site "obs", plate "J")."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", len(sigma)):
        theta_raw = pyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_raw)
        return pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


def make_eight_schools(gen):
    y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
    sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
    return (sigma, y), (sigma, y)


def _seeded(make):
    return lambda seed=0: make(torch.Generator().manual_seed(seed))


CATALOGUE = [
    Entry("linear", linear, _seeded(make_linear), ("w[0]", 1.5)),
    Entry("logistic", logistic, _seeded(make_logistic), ("w[0]", 2.0)),
    Entry("poisson", poisson, _seeded(make_poisson), ("b", 1.0)),
    Entry("varying-intercepts", varying_intercepts, _seeded(_groups), ("b", 0.7)),
    Entry("varying-intercepts-noncentred", varying_intercepts_noncentred, _seeded(_groups), ("b", 0.7)),
    Entry("nested-plates", nested, _seeded(make_nested)),
    Entry("two-observed-sites", two_outcomes, _seeded(make_two_outcomes), ("w[0]", 1.0), sites=("y", "z")),
    Entry("deterministic", with_deterministic, _seeded(make_linear), ("w[0]", 1.5)),
    Entry("flat-prior", flat_prior, _seeded(make_linear), ("beta[0]", 1.5)),
    Entry("ordered-transform", ordinal, _seeded(make_ordinal), ("w[0]", 1.5)),
    Entry("categorical", softmax, _seeded(make_softmax)),
    Entry("binomial", binomial, _seeded(make_binomial), ("w", 1.2)),
    Entry("keyword-data", keyword_data, _seeded(make_linear), ("w[0]", 1.5)),
    Entry("eight-schools", eight_schools, _seeded(make_eight_schools), ("mu", 4.4)),  # NumPyro's posterior mean
]
