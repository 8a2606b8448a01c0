"""MC dropout as a variational family (Gal & Ghahramani 2016)."""

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

import zoo


@pytest.fixture
def setup():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=gen), torch.randn(30, generator=gen)
    zm = zoo.load("bnn", in_features=4, hidden=[8], noise_scale=0.5, prior_scale=2.0)
    return zm, x, y


def test_objective_is_nll_plus_l2_of_the_masked_weights(setup):
    zm, x, y = setup
    guide = zm.make_guide("mc-dropout", p=0.2)
    guide(x, y)  # create the parameters first so both runs below draw the same masks
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(zm.model, guide, x, y)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        trace = poutine.trace(guide).get_trace(x, y)
    w = {k: trace.nodes[k]["value"].detach() for k in ("w0", "b0", "w1", "b1")}
    f = (torch.relu(x @ w["w0"].T + w["b0"]) @ w["w1"].T + w["b1"]).squeeze(-1)
    nll = -torch.distributions.Normal(f, 0.5).log_prob(y).sum()
    l2 = sum((v**2).sum() for v in w.values()) / (2 * 2.0**2)
    log_norm = sum(v.numel() for v in w.values()) * torch.log(torch.tensor(2.0 * (2 * torch.pi) ** 0.5))
    # the masks' log q(z) is a constant of the family (no parameter in it)
    log_q_masks = sum(trace.nodes[k]["fn"].log_prob(trace.nodes[k]["value"])
                      for k in ("mc_dropout.w0.mask", "mc_dropout.w1.mask"))
    assert loss == pytest.approx(float(nll + l2 + log_norm + log_q_masks), rel=1e-5)


def test_draws_drop_whole_input_units_at_rate_p(setup):
    zm, x, y = setup
    guide = zm.make_guide("mc-dropout", p=0.3)
    with pyro.plate("_draws", 4000, dim=-2):
        w0 = poutine.trace(guide).get_trace(x, y).nodes["w0"]["value"].squeeze(-3)  # (S, 8, 4)
    dropped = (w0 == 0).all(-2)  # a dropped input unit zeroes its whole column
    assert float(dropped.float().mean()) == pytest.approx(0.3, abs=0.02)
    m = pyro.param("mc_dropout.w0").detach()
    torch.testing.assert_close(w0.mean(0), m, atol=0.08, rtol=0)  # inverted dropout: E[W] = M


def test_predictive_averages_stochastic_passes_and_tends_to_weight_scaling(setup):
    zm, x, y = setup
    post = zoo.fit(zm, (x, y), "svi", guide="mc-dropout", guide_options={"p": 0.2}, num_steps=200,
                   num_samples=300, seed=0)
    f = post.trace((x, None))[0].nodes["f"]["value"]
    assert f.std(0).mean() > 0.01  # passes differ
    deterministic = zoo.fit(zm, (x, y), "svi", guide="mc-dropout", guide_options={"p": 0.0},
                            num_steps=200, num_samples=5, seed=0)
    f0 = deterministic.trace((x, None))[0].nodes["f"]["value"]
    assert float(f0.std(0).max()) == 0.0  # p = 0: every pass is the weight-scaled network
