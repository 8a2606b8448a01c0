"""Backend and model options that no other test reaches, each against a known answer: ClippedAdam, the
Matérn-5/2 kernel, Laplace's evidence-tuned prior, and its diagonal Hessian."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo

NOISE = 0.5


@pytest.fixture(scope="module")
def linear():
    """A conjugate regression whose weights (4, -3) sit far out in its N(0, 1) prior, so the evidence wants a
    wider prior than it has."""
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("y", dist.Normal(x @ w, NOISE), obs=y)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=gen)
    y = x @ torch.tensor([4.0, -3.0]) + NOISE * torch.randn(30, generator=gen)
    return model, (x, y)


def test_clipped_adam_reaches_the_posterior_mode(linear):
    model, (x, y) = linear
    exact = torch.linalg.solve(x.T @ x / NOISE**2 + torch.eye(2), x.T @ y / NOISE**2)
    post = zoo.fit(model, (x, y), "svi", optimizer="clipped_adam", guide="delta", num_steps=1500, lr=0.05,
                   num_samples=2, seed=0)
    torch.testing.assert_close(post.flat_samples()["w"][0], exact, atol=0.02, rtol=0)


def test_matern52_covariance_is_the_closed_form():
    x = torch.linspace(0, 3, 7).unsqueeze(-1)
    zm = zoo.load("gp-exact", data=(x, torch.sin(x[:, 0])), kernel="matern52")
    lengthscale, outputscale = torch.tensor([[0.7]]), torch.tensor([[2.0]])
    k = zm.gp.covariance(x, x, lengthscale, outputscale)
    r = (x - x.T).abs() / 0.7
    expected = 2.0 * (1 + math.sqrt(5) * r + 5 * r**2 / 3) * torch.exp(-math.sqrt(5) * r)
    torch.testing.assert_close(k, expected, atol=1e-5, rtol=1e-5)


def test_laplace_tunes_the_prior_to_the_evidence_maximum(linear):
    model, (x, y) = linear
    post = zoo.fit(model, (x, y), "laplace", curvature="exact", tune_prior=True, prior_rounds=3, num_steps=500,
                   num_samples=10, seed=0)
    grid = [10 ** (k / 10) for k in range(-30, 31)]  # the zoo's grid of prior-precision factors

    def exact_log_evidence(alpha):  # y ~ N(0, x x^T / alpha + noise^2 I)
        return float(dist.MultivariateNormal(torch.zeros(30), x @ x.T / alpha + NOISE**2 * torch.eye(30)).log_prob(y))

    best = max(grid, key=exact_log_evidence)
    assert best < 0.5  # the test means something: the evidence wants a wider prior than N(0, 1)
    assert post.info["prior_precision_scale"] == pytest.approx(best)
    assert post.info["log_marginal_likelihood"] == pytest.approx(exact_log_evidence(best), abs=1e-2)
    untuned = zoo.fit(model, (x, y), "laplace", curvature="exact", tune_prior=False, num_steps=500,
                      num_samples=10, seed=0)
    assert post.info["log_marginal_likelihood"] > untuned.info["log_marginal_likelihood"] + 1


def test_diagonal_laplace_is_the_diagonal_of_the_full_hessian(linear):
    model, data = linear
    fits = {h: zoo.fit(model, data, "laplace", curvature="exact", hessian=h, tune_prior=False, num_steps=500,
                       num_samples=10, seed=0) for h in ("full", "diag")}
    full, diag = (fits[h].params["laplace.precision"] for h in ("full", "diag"))
    assert full.shape == (2, 2) and diag.shape == (2,)
    torch.testing.assert_close(diag, full.diagonal(), rtol=1e-5, atol=1e-4)
    assert float(full[0, 1].abs()) > 1  # correlated weights: the diagonal leaves something out


def test_the_one_adam_is_torchs_adam_under_an_exponential_schedule():
    from zoo.inference.adam import Adam

    ours, theirs = torch.tensor([1.0, -2.0], requires_grad=True), torch.tensor([1.0, -2.0], requires_grad=True)
    late = torch.tensor([3.0], requires_grad=True)  # joins at the third step, at that step's rate
    optim = Adam(lr=0.1, gamma=0.9)
    reference = torch.optim.Adam([theirs], lr=0.1)
    schedule = torch.optim.lr_scheduler.ExponentialLR(reference, gamma=0.9)
    for t in range(5):
        params = [ours, late] if t >= 2 else [ours]
        sum((p ** 3).sum() for p in params).backward()
        optim.step(params)
        (theirs ** 3).sum().backward()
        reference.step(), reference.zero_grad(), schedule.step()
        torch.testing.assert_close(ours, theirs)
        assert ours.grad is None
        if t == 2:  # Adam's first step moves a coordinate by the rate: here 0.1 * 0.9**2
            assert float(late.detach()) == pytest.approx(3.0 - 0.1 * 0.9**2, abs=1e-6)


def test_adam_step_scales_multiply_each_update():
    # svi's Laplace start scales its location's steps by the marginal sds: Adam's first step moves each entry by
    # about lr, so here by lr times its scale
    from zoo.inference.adam import Adam

    p = torch.zeros(3, requires_grad=True)
    optim = Adam(lr=0.1, gamma=1.0)
    optim.step_scales = {p: torch.tensor([1.0, 0.1, 0.01])}
    (p * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
    optim.step([p])
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.01, -0.001]), rtol=1e-5, atol=1e-8)


def test_clipped_adam_clamps_each_gradient_element():
    from zoo.inference.adam import Adam

    p = torch.tensor([0.0, 0.0], requires_grad=True)
    p.grad = torch.tensor([100.0, 0.5])
    optim = Adam(lr=1.0, gamma=1.0, clip=1.0)
    optim.step([p])
    # Adam's first step is lr * g / |g| whatever the size; the clamp shows in its second-moment state
    state = optim._optim.state[p]
    torch.testing.assert_close(state["exp_avg"], 0.1 * torch.tensor([1.0, 0.5]))
