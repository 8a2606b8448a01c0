"""Bayesian LeNet and LSTM: shapes, MC dropout, per-example noise, last-layer Laplace, bad input."""

import warnings

import pyro
import pytest
import torch

import zoo
from zoo import _noise as noise
from zoo.inference.posterior import Posterior
from zoo.models.layers import conv2d, dense

TINY_CNN = dict(channels=[2, 3], hidden=6)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(0)
    x = torch.rand(40, 1, 16, 16)
    y = (x[:, 0, :8].mean((-1, -2)) > x[:, 0, 8:].mean((-1, -2))).long() + 2 * (x[:, 0, :, :8].mean((-1, -2)) > 0.5)
    return x, y


@pytest.mark.parametrize("guide", ["mc-dropout", "mean-field", "delta"])
def test_lenet_guides_fit_and_predict_shapes(images, guide):
    x, y = images
    zm = zoo.load("bayes-lenet", data=(x, y), **TINY_CNN)
    post = zoo.fit(zm, (x, y), "svi", guide=guide, num_steps=5, batch_size=16, num_samples=7, seed=0)
    pred = post.predict(x[:9])
    assert pred.probs.shape == (9, 10) and pred.draw_probs.shape == (7, 9, 10)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(9))
    assert set(post.evaluate((x, y))) == {"accuracy", "nll", "ece", "brier"}


def _dropout_posterior(images, p, num_samples=400):
    x, y = images
    zm = zoo.load("bayes-lenet", data=(x, y), **TINY_CNN)
    post = zoo.fit(zm, (x, y), "svi", guide="mc-dropout", guide_options={"p": p, "conv_p": p}, num_steps=1,
                   lr=1e-9, num_samples=num_samples, seed=0)
    mean_weights = {n: post.params[f"mc_dropout.{n}"][None, None] for n in post.sites.latent}
    return post, Posterior(post.model, mean_weights, method="svi", sites=post.sites)


def test_mc_dropout_passes_differ_and_their_mean_tends_to_weight_scaling(images):
    x, _ = images
    gaps = []
    for p in (0.5, 0.1, 0.001):
        post, scaled = _dropout_posterior(images, p)
        draws = post.predict(x).draw_probs
        if p == 0.5:
            assert (draws[0] - draws[1]).abs().max() > 1e-3  # stochastic passes differ
        gaps.append(float((draws.mean(0) - scaled.predict(x).probs).abs().max()))
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 2e-3


def test_per_example_noise_is_unbiased_with_the_right_variance():
    torch.manual_seed(0)
    loc, scale = torch.randn(3, 4), torch.rand(3, 4) * 0.5
    x = torch.randn(1, 4).expand(20000, 4)
    w = loc + scale * torch.randn(3, 4)
    for tied in (False, True):
        with noise.per_example_noise():
            noise.register(w, "normal", loc, scale)
            out = dense(x, w, tied=tied)
        if not tied:  # local reparameterisation: the exact output distribution per example
            torch.testing.assert_close(out.mean(0), x[0] @ loc.T, atol=0.05, rtol=0)
            torch.testing.assert_close(out.var(0), (x[0] ** 2) @ (scale ** 2).T, atol=0.05, rtol=0.1)
        else:  # flipout: one weight sample per example, mean exact, rows decorrelated
            torch.testing.assert_close(out.mean(0), x[0] @ loc.T, atol=0.05, rtol=0)
            assert out.std(0).min() > 0.05
    assert torch.equal(dense(x[:2], w)[0], dense(x[:2], w)[1])  # outside the block: one shared weight


@pytest.mark.parametrize("guide", ["mean-field", "mc-dropout"])
@pytest.mark.parametrize("model", ["bayes-lenet", "bayes-lstm-regressor"])
def test_per_example_noise_reaches_every_weight_with_vectorised_particles(model, guide, images, monkeypatch):
    # under num_particles > 1 a weight arrives with a plate slot that the layer squeezes away; the noise
    # registered for the guide's tensor must follow it (it was silently off: lookup by tensor identity)
    torch.manual_seed(0)
    if model == "bayes-lenet":
        data = images
        zm = zoo.load(model, data=data, **TINY_CNN)
    else:
        data = zoo.datasets.series.windows(torch.sin(torch.arange(60.0) / 4), length=5).train
        zm = zoo.load(model, data=data, hidden=4)
    hits, misses, lookup = [], [], noise.lookup

    def spy(value):
        entry = lookup(value)
        (hits if entry is not None else misses).append(tuple(value.shape))
        return entry

    monkeypatch.setattr(noise, "lookup", spy)
    zoo.fit(zm, data, "svi", guide=guide, num_particles=3, num_steps=2, num_samples=2, seed=0)
    assert hits and all(shape[0] == 3 for shape in hits)  # each with the particle dim
    if guide == "mean-field":  # every weight is noisy (dropout guides leave some rates at 0)
        dense_misses = [s for s in misses if len(s) == 3 and s[0] == 3]  # dense weights (particles, out, in)
        assert not dense_misses, misses  # convolution kernels (5-D) go without, as documented


def test_per_example_dropout_masks_for_dense_and_conv():
    torch.manual_seed(0)
    m = torch.randn(5, 3, 3, 3)
    x = torch.rand(1, 3, 6, 6).expand(4000, 3, 6, 6)
    with noise.per_example_noise():
        noise.register(m, "dropout", m, keep=0.5)
        out = conv2d(x, m, torch.zeros(5))
    assert (out[0] - out[1]).abs().max() > 0
    torch.testing.assert_close(out.mean(0), conv2d(x[:1], m, torch.zeros(5))[0], atol=0.1, rtol=0.05)


def test_last_layer_laplace_on_a_tiny_cnn(images):
    x, y = images
    zm = zoo.load("lenet", data=(x, y), **TINY_CNN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", zoo.ZooWarning)  # minibatch MAP losses are noisy
        fits = {curv: zoo.fit(zm, (x, y), "laplace", curvature=curv, hessian="full", fisher_samples=48,
                              num_steps=300, lr=1e-2, num_samples=50, seed=0, tune_prior=False, batch_size=20)
                for curv in ("exact", "fisher")}
    post = fits["exact"]
    assert post.info["num_parameters"] == 10 * 6 + 10
    draws = post.flat_samples()
    assert draws["w3"].std(0).min() > 0 and float(draws["w0"].std(0).max()) == 0.0
    # softmax output layer: the log likelihood's Hessian is its Fisher, so the two must agree
    exact, fisher = (f.params["laplace.precision"] for f in fits.values())
    assert float((exact - fisher).norm() / exact.norm()) < 0.2
    # and the exact one is the prior's unit precision plus the data's Hessian, here by autograd at the MAP
    theta = post.params["laplace.loc"]
    fixed = {k: v[0] for k, v in draws.items() if k not in ("w3", "b3")}
    torch.testing.assert_close(theta[:-70], torch.cat([v.flatten() for v in fixed.values()]))

    def nll(last):
        values = {**fixed, "w3": last[:60].reshape(10, 6), "b3": last[60:]}
        trace = pyro.poutine.trace(pyro.poutine.condition(zm.model, values)).get_trace(x, y)
        return -trace.nodes["y"]["fn"].log_prob(y).sum()

    data_hessian = torch.autograd.functional.hessian(nll, theta[-70:])
    torch.testing.assert_close(exact, data_hessian + torch.eye(70), atol=1e-3, rtol=1e-3)


def test_nuts_is_refused_on_a_big_lenet_but_not_a_tiny_one(images):
    x, y = images
    with pytest.raises(zoo.ZooError, match="weights; NUTS"):
        zoo.fit(zoo.load("bayes-lenet", data=(x, y)), (x, y), "nuts")
    assert zoo.load("bayes-lenet", data=(x, y), channels=[1, 1], hidden=2).refusal("nuts") is None


def test_classifier_arviz_has_last_layer_and_pointwise_log_likelihood(images, monkeypatch):
    x, y = images
    zm = zoo.load("bayes-lenet", data=(x, y), **TINY_CNN)
    post = zoo.fit(zm, (x, y), "svi", guide="mean-field", num_steps=3, num_samples=6, seed=0)
    assert len(post.to_arviz().posterior.data_vars) == 8  # a net this small: every weight
    monkeypatch.setattr("zoo.inference.arviz.MAX_DEFAULT_NUMBERS", 100)  # as if it were a big one
    idata = post.to_arviz((x[:10], y[:10]))
    assert set(idata.posterior.data_vars) == {"w3", "b3"}
    assert idata.log_likelihood["y"].shape == (1, 6, 10)
    assert idata.posterior_predictive["y"].shape == (1, 6, 10)


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (x[:, :, :15], y), r"shape \(points, 1, 16, 16\)"),
    (lambda x, y: (x * 255, y), r"pixel values must lie in \[0, 1\]"),
    (lambda x, y: (x, y + 10), r"labels must lie in \[0, 9\]"),
])
def test_bad_images_and_labels(images, bad, message):
    x, y = images
    zm = zoo.load("bayes-lenet", data=(x, y), **TINY_CNN)
    with pytest.raises(zoo.ZooError, match=message):
        zoo.fit(zm, bad(x, y), "svi", num_steps=1)


def _tokens():
    torch.manual_seed(0)
    x = torch.randint(1, 12, (30, 6))
    x[::3, 4:] = 0  # shorter sequences, padded
    y = (x == 3).any(-1).long()
    return x, y


@pytest.mark.parametrize("guide", ["mc-dropout", "mean-field"])
def test_lstm_guides_fit_and_predict(guide):
    x, y = _tokens()
    zm = zoo.load("bayes-lstm", data=(x, y), vocab_size=12, embed_dim=4, hidden=5)
    post = zoo.fit(zm, (x, y), "svi", guide=guide, num_steps=4, batch_size=10, num_samples=5, seed=0)
    assert post.predict(x).draw_probs.shape == (5, 30, 2)
    assert post.flat_samples()["embed"].std(0).max() == 0  # the embedding is a point estimate


@pytest.mark.parametrize("name, guide, draws", [("lstm", "delta", 1), ("bayes-lstm", "mean-field", 3)])
def test_lstm_state_ignores_padding(name, guide, draws):
    """One network (the twin's one draw) runs PyTorch's fused LSTM and reads each row's state after its last
    token; several draws run the step loop, whose mask holds a finished row's state: both must give a short
    row, padded in a batch of longer ones, what it gets alone (cut to its own length, with no padding)."""
    x, y = _tokens()
    zm = zoo.load(name, data=(x, y), vocab_size=12, embed_dim=4, hidden=5)
    post = zoo.fit(zm, (x, y), "svi", guide=guide, num_steps=2, seed=0, num_samples=draws)
    short = x[::3, :4]  # every third row: 4 tokens, then 2 of padding among rows of 6
    assert (short != 0).all() and (x[1::3] != 0).all()
    torch.testing.assert_close(post.predict(x).probs[::3], post.predict(short).probs)


@pytest.mark.parametrize("name, guide, param", [("lstm", "delta", "AutoDelta.{}"),
                                                ("bayes-lstm", "mean-field", "mean_field.{}.loc"),
                                                ("bayes-lstm", "mc-dropout", "mc_dropout.{}")])
def test_lstm_starts_at_plain_pytorchs_scales(name, guide, param):
    """Every guide starts the weights at the scales of nn.Embedding, nn.LSTM and nn.Linear. He's gain (for
    ReLU nets) saturated the gates and cost 3 to 16 points of SST-2 accuracy in benchmarks/parity.py."""
    torch.manual_seed(0)
    x, y = torch.randint(1, 1000, (8, 5)), torch.randint(0, 2, (8,))
    zm = zoo.load(name, vocab_size=1000, embed_dim=64, hidden=64, num_classes=2)
    post = zoo.fit(zm, (x, y), "svi", guide=guide, num_steps=1, lr=1e-12, seed=0, num_samples=1)
    lstm, out = torch.nn.LSTM(64, 64), torch.nn.Linear(64, 2)
    plain = {"embed": torch.nn.Embedding(1000, 64).weight, "w_ih": lstm.weight_ih_l0, "w_hh": lstm.weight_hh_l0,
             "w_out": out.weight}
    for site, reference in plain.items():
        start = post.params[param.format(site)]
        assert float(start.std()) == pytest.approx(float(reference.detach().std()), rel=0.2), site


def test_fused_lstm_matches_the_loop_with_padding():
    """One network without noise runs PyTorch's fused LSTM; a leading draw dim runs the step loop: same states
    and gradients, each read after its sequence's last token."""
    from zoo.models.rnn import lstm

    torch.manual_seed(0)
    inputs, lengths = torch.randn(6, 7, 3), torch.tensor([7, 1, 4, 7, 2, 5])
    weights = [(0.4 * torch.randn(shape)).requires_grad_() for shape in ((20, 3), (20, 5), (20,))]
    fused = lstm(inputs, lengths, *weights)
    looped = lstm(inputs, lengths, *(w[None] for w in weights))[0]
    torch.testing.assert_close(fused, looped)
    grads = [torch.autograd.grad(out.pow(2).sum(), weights) for out in (fused, looped)]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_lstm_bad_input():
    x, y = _tokens()
    zm = zoo.load("bayes-lstm", data=(x, y), vocab_size=12, embed_dim=4, hidden=5)
    empty = x.clone()
    empty[2] = 0
    with pytest.raises(zoo.ZooError, match=r"rows \[2\] are empty"):
        zoo.fit(zm, (empty, y), "svi", num_steps=1)
    with pytest.raises(zoo.ZooError, match=r"token ids must lie in \[0, 11\]"):
        zoo.fit(zm, (x + 20, y), "svi", num_steps=1)
    with pytest.raises(zoo.ZooError, match="integer token ids"):
        zoo.fit(zm, (x.float(), y), "svi", num_steps=1)


def test_lstm_forecaster_learns_a_sine():
    noise_ = 0.05 * torch.randn(300, generator=torch.Generator().manual_seed(0))
    data = zoo.datasets.series.windows(torch.sin(torch.arange(300.0) / 6) + noise_, length=12)
    zm = zoo.load("bayes-lstm-regressor", data=data, hidden=8)
    post = zoo.fit(zm, data.train, "svi", guide="mean-field", num_epochs=40, lr=1e-2, num_samples=50, seed=0)
    result = post.evaluate(data.test)
    # it must beat persistence (repeating the window's last value), the baseline any forecaster must beat,
    # and come close to the same LSTM in plain PyTorch trained alike (0.054 here; the noise sd is 0.05)
    persistence = float(((data.test.x[:, -1, 0] - data.test.y) * data.test.y_std).pow(2).mean().sqrt())
    torch.manual_seed(0)
    net, head = torch.nn.LSTM(1, 8, batch_first=True), torch.nn.Linear(8, 1)
    optim = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=1e-2)
    x, y = data.train.x, data.train.y
    for _ in range(40):
        for rows in torch.randperm(len(x)).split(64):
            loss = (head(net(x[rows])[0][:, -1]).squeeze(-1) - y[rows]).pow(2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
    with torch.no_grad():
        plain = head(net(data.test.x)[0][:, -1]).squeeze(-1)
    plain_rmse = float(((plain - data.test.y) * data.test.y_std).pow(2).mean().sqrt())
    assert result["rmse"] < 0.6 * persistence and result["rmse"] < 1.25 * plain_rmse, (result, plain_rmse)


def test_weight_prior_is_the_expanded_normal_and_laplace_reads_it_as_one():
    import pyro.distributions as dist

    from zoo._weight_prior import WeightPrior
    from zoo.inference._base import Problem
    from zoo.inference.curvature import LaplaceTerms
    from zoo.inference.sites import Sites

    expanded = dist.Normal(torch.zeros(()), 0.7).expand([3, 4]).to_event(2)
    prior = WeightPrior((3, 4), 0.7)
    value = torch.randn(5, 1, 3, 4)
    assert torch.allclose(prior.log_prob(value), expanded.log_prob(value))
    assert prior.expand((5, 1)).log_prob(value).shape == (5, 1)
    torch.manual_seed(0)
    assert abs(float(prior.sample((4000,)).std()) - 0.7) < 0.01

    x, y = torch.randn(30, 2), torch.randn(30)
    zm = zoo.load("bnn", in_features=2, hidden=[3], prior_scale=0.7)
    terms = LaplaceTerms(Problem(zm.model, (x, y), Sites.of(zm.model, (x, y)), 1, False, zm.init_loc_fn))
    weights = terms.latents.coordinates(["w0", "b0", "w1", "b1"])
    assert bool(terms.is_normal[weights].all()) and not bool(terms.is_normal[-1])  # the precision is Gamma
    assert torch.allclose(terms.prior_scale[weights], torch.tensor(0.7))
