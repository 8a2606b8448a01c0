"""The regression networks' likelihoods: heteroscedastic noise and Student-t tails, under every backend."""

import pytest
import torch

import zoo
from zoo import ZooError

X_TEST = torch.tensor([[-2.5], [0.0], [2.5]])


def _true_sd(x):
    return 0.05 + 0.3 * (x[:, 0] + 3)  # 0.2, 0.95, 1.7 at X_TEST


@pytest.fixture(scope="module")
def growing_noise():
    torch.manual_seed(0)
    x = torch.linspace(-3, 3, 300).unsqueeze(-1)
    return x, torch.sin(x[:, 0]) + _true_sd(x) * torch.randn(300)


@pytest.mark.parametrize("backend, options", [("svi", dict(num_steps=3000)), ("laplace", dict(predictive="glm"))])
def test_heteroscedastic_bnn_recovers_noise_that_grows_with_x(growing_noise, backend, options):
    model = zoo.load("bnn", in_features=1, hidden=[20], activation="tanh", likelihood="heteroscedastic")
    post = zoo.fit(model, growing_noise, backend, num_samples=200, seed=0, **options)
    pred = post.predict(X_TEST)
    assert torch.all(pred.aleatoric_std.diff() > 0)
    assert torch.allclose(pred.aleatoric_std, _true_sd(X_TEST), rtol=0, atol=0.25)  # one noise level: off by 0.8
    # the split: total variance is aleatoric plus epistemic
    assert torch.allclose(pred.std ** 2, pred.aleatoric_std ** 2 + pred.epistemic_std ** 2, rtol=1e-4)


def test_heteroscedastic_bnn_under_nuts(growing_noise):
    x, y = growing_noise
    model = zoo.load("bnn", in_features=1, hidden=[5], activation="tanh", likelihood="heteroscedastic")
    post = zoo.fit(model, (x[::3], y[::3]), "nuts", num_samples=50, num_warmup=100, num_chains=2,
                   max_tree_depth=5, density="traced", seed=0)
    assert post.predict(X_TEST).aleatoric_std.diff().min() > 0


def test_student_t_learns_heavy_tails_and_not_where_there_are_none():
    torch.manual_seed(1)
    x = torch.linspace(-3, 3, 300).unsqueeze(-1)
    clean = torch.sin(x[:, 0])
    heavy = clean + 0.3 * torch.distributions.StudentT(2.0).sample((300,))
    gaussian = clean + 0.3 * torch.randn(300)
    model = zoo.load("bnn", in_features=1, hidden=[20], activation="tanh", likelihood="student-t")
    df = {}
    for name, y in (("heavy", heavy), ("gaussian", gaussian)):
        post = zoo.fit(model, (x, y), "laplace", predictive="glm", optimizer="lbfgs", num_samples=200, seed=0)
        df[name] = 2 + float(post.samples["nu"].mean())
    assert df["heavy"] < 5 < 10 < df["gaussian"]


def test_bayes_lstm_regressor_takes_the_likelihoods():
    torch.manual_seed(0)
    x = torch.randn(64, 5, 1)
    y = x[:, -1, 0] + 0.1 * torch.randn(64)
    for likelihood, noise_sites in (("heteroscedastic", set()), ("student-t", {"precision", "nu"})):
        model = zoo.load("bayes-lstm-regressor", in_features=1, hidden=4, likelihood=likelihood)
        post = zoo.fit(model, (x, y), "svi", num_epochs=2, num_samples=10, seed=0)
        assert noise_sites <= set(post.samples)
        assert post.predict(x[:3]).aleatoric_std.shape == (3,)


def test_likelihood_bad_input():
    with pytest.raises(ZooError, match="likelihood must be one of"):
        zoo.load("bnn", in_features=1, likelihood="poisson")
    with pytest.raises(ZooError, match="drop noise_scale"):
        zoo.load("bnn", in_features=1, likelihood="heteroscedastic", noise_scale=0.1)
