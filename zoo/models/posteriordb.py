"""Ten posteriordb posteriors (Magnusson et al. 2023) translated from Stan into ordinary Pyro models.

Each ``pdb-<folder>`` model has the Stan program's priors, constraints and parameter names; a Stan
parameter without a prior is flat (``ImproperUniform``). Its arguments are the ``args`` of
``zoo.datasets.pdb.load_reference("<folder>")`` (observations last), and its reference posterior is
that Reference's ``reference``. Every builder accepts ``data=`` (unused) for the zoo's uniform
``load(name, data=...)`` call.

>>> import zoo.datasets.pdb as pdb
>>> ref = pdb.load_reference("arK-arK")
>>> trace = pyro.poutine.trace(ark()).get_trace(*ref.args)
>>> trace.nodes["beta"]["value"].shape, trace.nodes["y"]["value"].shape
(torch.Size([5]), torch.Size([195]))
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from .._registry import register_model

PAPER = "posteriordb (Magnusson et al. 2023): "
GUIDES = ("full-rank", "mean-field", "low-rank", "delta")


def flat(support, *event_shape):
    """Stan's implicit prior on a parameter with no ``~`` statement: uniform over its support."""
    return dist.ImproperUniform(support, (), event_shape)


def card(name: str, likelihood: str, notes: str = ""):
    """Register ``pdb-<name>`` with the cards every posteriordb model shares."""
    return register_model(f"pdb-{name}", task="regression", family="posteriordb", likelihood=likelihood,
                          default_guide="full-rank", guides=GUIDES, paper=PAPER + name,
                          notes=notes or f"args from zoo.datasets.pdb.load_reference({name!r})")


@card("kidiq-kidscore_momiq", "kid_score ~ Normal(beta[1] + beta[2] mom_iq, sigma); beta flat, sigma ~ HalfCauchy(2.5)")
def kidiq_kidscore_momiq(*, data=None):
    """Kid's test score on mother's IQ."""
    def model(mom_iq, kid_score=None):
        beta = pyro.sample("beta", flat(constraints.real, 2))
        sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
        with pyro.plate("data", mom_iq.shape[0]):
            return pyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)
    return model


@card("kidiq-kidscore_interaction",
      "kid_score ~ Normal(beta . (1, mom_hs, mom_iq, mom_hs mom_iq), sigma); beta flat, sigma ~ HalfCauchy(2.5)")
def kidiq_kidscore_interaction(*, data=None):
    """Kid's test score on mother's high school, IQ and their interaction."""
    def model(mom_hs, mom_iq, inter, kid_score=None):
        beta = pyro.sample("beta", flat(constraints.real, 4))
        sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
        mean = beta[0] + beta[1] * mom_hs + beta[2] * mom_iq + beta[3] * inter
        with pyro.plate("data", mom_iq.shape[0]):
            return pyro.sample("kid_score", dist.Normal(mean, sigma), obs=kid_score)
    return model


@card("earnings-logearn_interaction",
      "log_earn ~ Normal(beta . (1, height, male, height male), sigma); beta, sigma flat")
def earnings_logearn_interaction(*, data=None):
    """Log earnings on height, sex and their interaction; no priors (flat)."""
    def model(height, male, inter, log_earn=None):
        beta = pyro.sample("beta", flat(constraints.real, 4))
        sigma = pyro.sample("sigma", flat(constraints.positive))
        mean = beta[0] + beta[1] * height + beta[2] * male + beta[3] * inter
        with pyro.plate("data", height.shape[0]):
            return pyro.sample("log_earn", dist.Normal(mean, sigma), obs=log_earn)
    return model


@card("mesquite-logmesquite",
      "log_weight ~ Normal(beta . (1, log diam1, log diam2, log canopy_height, log total_height, log density, "
      "group), sigma); beta, sigma flat")
def mesquite_logmesquite(*, data=None):
    """Log weight of mesquite bushes on log dimensions and group; no priors (flat)."""
    def model(log_diam1, log_diam2, log_canopy_height, log_total_height, log_density, group, log_weight=None):
        beta = pyro.sample("beta", flat(constraints.real, 7))
        sigma = pyro.sample("sigma", flat(constraints.positive))
        mean = (beta[0] + beta[1] * log_diam1 + beta[2] * log_diam2 + beta[3] * log_canopy_height
                + beta[4] * log_total_height + beta[5] * log_density + beta[6] * group)
        with pyro.plate("data", group.shape[0]):
            return pyro.sample("log_weight", dist.Normal(mean, sigma), obs=log_weight)
    return model


@card("sblrc-blr", "y ~ Normal(X beta, sigma); beta ~ Normal(0, 10), sigma ~ HalfNormal(10)")
def sblrc_blr(*, data=None):
    """Bayesian linear regression on a correlated design."""
    def model(X, y=None):
        beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([X.shape[1]]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(10.0))
        with pyro.plate("data", X.shape[0]):
            return pyro.sample("y", dist.Normal(X @ beta, sigma), obs=y)
    return model


@card("low_dim_gauss_mix-low_dim_gauss_mix",
      "y ~ theta Normal(mu[1], sigma[1]) + (1 - theta) Normal(mu[2], sigma[2]); mu ordered ~ Normal(0, 2), "
      "sigma ~ HalfNormal(2), theta ~ Beta(5, 5)",
      notes="mu is Stan's ordered[2]: an ImproperUniform on ordered vectors plus its Normal(0, 2) prior as a "
            "factor; n= is the number of points drawn when y is not given.")
def low_dim_gauss_mix(*, data=None, n: int = 1000):
    """Two-component Gaussian mixture with ordered means."""
    def model(y=None):
        mu = pyro.sample("mu", flat(constraints.ordered_vector, 2))
        pyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum(-1))
        sigma = pyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
        theta = pyro.sample("theta", dist.Beta(5.0, 5.0))
        mix = dist.Categorical(probs=torch.stack([theta, 1 - theta], -1))
        with pyro.plate("data", n if y is None else y.shape[0]):
            return pyro.sample("y", dist.MixtureSameFamily(mix, dist.Normal(mu, sigma)), obs=y)
    return model


@card("arK-arK", "y[t] ~ Normal(alpha + sum_k beta[k] y[t - k], sigma); alpha, beta ~ Normal(0, 10), "
      "sigma ~ HalfCauchy(2.5)", notes="args: the lag matrix (T - K, K) of load_reference('arK-arK') and y[K:]")
def ark(*, data=None):
    """Autoregression of order K = lags.shape[1]."""
    def model(lags, y=None):
        alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
        beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([lags.shape[1]]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
        with pyro.plate("data", lags.shape[0]):
            return pyro.sample("y", dist.Normal(alpha + lags @ beta, sigma), obs=y)
    return model


@card("gp_pois_regr-gp_regr",
      "y ~ MVN(0, alpha^2 exp(-(x_i - x_j)^2 / (2 rho^2)) + sigma I); rho ~ Gamma(25, 4), alpha ~ HalfNormal(2), "
      "sigma ~ HalfNormal(1)",
      notes="one joint Gaussian over all points (no pointwise likelihood); as in Stan, sigma (not sigma^2) is "
            "added to the diagonal, and no jitter")
def gp_regr(*, data=None):
    """Exact GP regression with a squared-exponential kernel."""
    def model(x, y=None):
        rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
        alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
        sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
        sqdist = (x[:, None] - x[None, :]) ** 2
        cov = alpha**2 * torch.exp(-0.5 * sqdist / rho**2) + sigma * torch.eye(x.shape[0])
        return pyro.sample("y", dist.MultivariateNormal(torch.zeros(x.shape[0]), covariance_matrix=cov), obs=y)
    return model


@card("garch-garch11",
      "y[t] ~ Normal(mu, sigma[t]), sigma[t]^2 = alpha0 + alpha1 (y[t-1] - mu)^2 + beta1 sigma[t-1]^2, "
      "sigma[1] = sigma1; mu, alpha0 > 0, alpha1 in (0, 1), beta1 in (0, 1 - alpha1), all flat",
      notes="args: y_prev (y_prev[t] = y[t-1]; y_prev[0] unused), sigma1 and y. beta1 = (1 - alpha1) beta1_raw "
            "with beta1_raw flat on (0, 1) and the Jacobian log(1 - alpha1) as a factor, so (alpha1, beta1) is "
            "flat as in Stan; the variance recursion is computed in closed form, s2 = B u with "
            "B[t, k] = beta1^(t - k) for k <= t.")
def garch11(*, data=None):
    """GARCH(1, 1) volatility."""
    def model(y_prev, sigma1, y=None):
        mu = pyro.sample("mu", flat(constraints.real))
        alpha0 = pyro.sample("alpha0", flat(constraints.positive))
        alpha1 = pyro.sample("alpha1", flat(constraints.unit_interval))
        beta1_raw = pyro.sample("beta1_raw", flat(constraints.unit_interval))
        beta1 = pyro.deterministic("beta1", (1 - alpha1) * beta1_raw)
        pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
        # s2[t] = sum_{k <= t} beta1^(t - k) u[k], u = (sigma1^2, alpha0 + alpha1 (y[t-1] - mu)^2 for t >= 2)
        u = torch.cat([(sigma1**2).reshape(1), alpha0 + alpha1 * (y_prev[1:] - mu) ** 2])
        steps = torch.arange(u.shape[0])
        lag = (steps[:, None] - steps[None, :]).clamp(min=0)
        s2 = torch.tril(beta1**lag) @ u
        with pyro.plate("data", u.shape[0]):
            return pyro.sample("y", dist.Normal(mu, s2.sqrt()), obs=y)
    return model


@card("nes1976-nes",
      "partyid7 ~ Normal(beta . (1, real_ideo, race_adj, age30_44, age45_64, age65up, educ1, gender, income), "
      "sigma); beta, sigma flat")
def nes(*, data=None):
    """Party identification on ideology, race, age group, education, gender and income (1976); flat priors."""
    def model(real_ideo, race_adj, age30_44, age45_64, age65up, educ1, gender, income, partyid7=None):
        beta = pyro.sample("beta", flat(constraints.real, 9))
        sigma = pyro.sample("sigma", flat(constraints.positive))
        mean = (beta[0] + beta[1] * real_ideo + beta[2] * race_adj + beta[3] * age30_44 + beta[4] * age45_64
                + beta[5] * age65up + beta[6] * educ1 + beta[7] * gender + beta[8] * income)
        with pyro.plate("data", real_ideo.shape[0]):
            return pyro.sample("partyid7", dist.Normal(mean, sigma), obs=partyid7)
    return model
