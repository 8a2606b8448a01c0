"""Sparse variational and deep GPs: the exact GP as the limit, shapes through layers, bad input."""

import gpytorch
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO

import zoo
from zoo.models.gp_exact import unit_kernel


@pytest.fixture(scope="module")
def wave():
    torch.manual_seed(0)
    x = torch.linspace(-3, 3, 25).unsqueeze(-1)
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(25)


def _exact_gp(kernel, noise, x, y, x_test):
    with torch.no_grad():
        k = kernel(x).to_dense()[0] + noise**2 * torch.eye(len(x))
        k_star = kernel(x_test, x).to_dense()[0]
        mean = k_star @ torch.linalg.solve(k, y)
        var = kernel(x_test, diag=True)[0] - (k_star * torch.linalg.solve(k, k_star.T).T).sum(-1)
    return mean, var


def test_svgp_at_its_optimal_q_is_the_exact_gp(wave):
    """Inducing points at the data: f = L v with K = L L^T, so the optimal q(v) is the exact posterior
    N(S L^T y / s^2, S), S = (I + L^T L / s^2)^-1, and the model's predictive must equal the exact GP's."""
    x, y = wave
    zm = zoo.load("svgp", data=(x, y), num_inducing=None)
    layer, noise = zm.modules["gp"].layers[0], 0.2
    zm.modules["gp"].raw_noise.data = torch.log(torch.expm1(torch.tensor(noise - 1e-6)))
    with torch.no_grad():
        chol = torch.linalg.cholesky(layer.kernel(x).to_dense()[0] + 1e-5 * torch.eye(25))
        cov = torch.linalg.inv(torch.eye(25) + chol.T @ chol / noise**2)
        c = torch.linalg.cholesky(cov)
        layer.q_loc.data = (cov @ chol.T @ y / noise**2).unsqueeze(0)
        layer.q_diag.data = torch.log(torch.expm1(c.diagonal())).unsqueeze(0)
        layer.q_offdiag.data = (c / c.diagonal().unsqueeze(-1)).tril(-1).unsqueeze(0)
    params = {f"gp$$${k}": v.detach().clone() for k, v in zm.modules["gp"].named_parameters()}
    draws = zm.make_guide("inducing")
    sites = zoo.inference._base.Sites.of(zm.model, (x, y), allow_local=True)
    samples, _ = zoo.inference._base.draw_from_guide(draws, (x, y), sites, 20000)
    post = zoo.Posterior(zm, {k: v.unsqueeze(0) for k, v in samples.items()}, method="svi", sites=sites,
                         params=params)
    x_test = torch.linspace(-3.5, 3.5, 9).unsqueeze(-1)
    mean, var = _exact_gp(layer.kernel, noise, x, y, x_test)
    pred = post.predict(x_test)
    assert torch.allclose(pred.mean, mean, atol=0.02)
    assert torch.allclose(pred.epistemic_std**2, var, rtol=0.05, atol=1e-3)


def test_svgp_loss_is_the_analytic_bound(wave):
    """The masked f sites add no density: the ELBO is E_q(f)[log N(y | f, s^2)] - KL(q(v) || p(v)), which
    for one Gaussian layer has a closed form."""
    x, y = wave
    zm = zoo.load("svgp", data=(x, y), num_inducing=6)
    gp = zm.modules["gp"]
    layer = gp.layers[0]
    torch.manual_seed(1)
    with torch.no_grad():
        layer.q_loc.normal_()
        layer.q_offdiag.normal_(std=0.3)
        q = layer.marginal(x).base_dist
        noise_var = gp.noise**2
        expected_ll = (-0.5 * torch.log(2 * torch.pi * noise_var)
                       - ((y - q.loc[:, 0]) ** 2 + q.scale[:, 0] ** 2) / (2 * noise_var)).sum()
        bound = expected_ll - torch.distributions.kl_divergence(layer.posterior(), layer.prior()).sum()
        elbo = TraceMeanField_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=1)
        loss = elbo.loss(zm.model, zm.make_guide("inducing"), x, y)
    assert -loss == pytest.approx(float(bound), rel=2e-3)


def test_svi_brings_svgp_close_to_the_exact_gp(wave):
    x, y = wave
    zm = zoo.load("svgp", data=(x, y), num_inducing=None)
    post = zoo.fit(zm, (x, y), seed=0, num_samples=4000, progress=False)  # the defaults: 2,000 Adam steps
    zm.load_params(post.params)
    gp = zm.modules["gp"]
    x_test = torch.linspace(-3.5, 3.5, 9).unsqueeze(-1)
    mean, var = _exact_gp(gp.layers[0].kernel, float(gp.noise.detach()), x, y, x_test)
    pred = post.predict(x_test)
    assert torch.allclose(pred.mean, mean, atol=0.05)
    # Adam on a full-covariance q(v) leaves it a little wide (measured: variance ratios 0.95 to 1.19)
    assert ((pred.epistemic_std**2 / var) - 1).abs().max() < 0.3


def test_dgp_shapes_through_three_layers():
    x, y = torch.randn(40, 4), torch.randn(40)
    zm = zoo.load("dgp", data=(x, y), num_layers=3, num_inducing=7)
    trace = poutine.trace(zm.model).get_trace(x, y)
    assert [trace.nodes[f"f{i}"]["value"].shape for i in range(3)] == [(40, 4), (40, 4), (40, 1)]
    assert trace.nodes["u0"]["value"].shape == (4, 7) and trace.nodes["u2"]["value"].shape == (1, 7)
    post = zoo.fit(zm, (x, y), num_steps=5, num_samples=6, progress=False)
    assert sorted(post.samples) == ["u0", "u1", "u2"] and post.samples["u1"].shape == (1, 6, 4, 7)
    assert post.predict(x[:3]).samples.shape == (6, 3)
    idata = post.to_arviz((x, y))
    assert idata.log_likelihood["y"].shape == (1, 6, 40)
    assert idata.posterior["lengthscale0"].dims == ("chain", "draw", "output0", "input")
    assert idata.posterior["lengthscale2"].shape == (1, 6, 1, 4) and idata.posterior["noise"].shape == (1, 6)
    kernel = zm.modules["gp"].layers[1].kernel
    assert float(idata.posterior["outputscale1"][0, 3, 2]) == pytest.approx(float(kernel.outputscale[2].detach()))


def test_bad_input_gets_clear_errors():
    x, y = torch.randn(30, 2), torch.randn(30)
    post = zoo.fit(zoo.load("svgp", data=(x, y), num_inducing=5), (x, y), num_steps=3, progress=False)
    with pytest.raises(zoo.ZooError, match=r"\(points, 2\)"):
        post.predict(torch.randn(4, 3))
    with pytest.raises(zoo.ZooError, match="NaN"):
        post.predict(torch.full((4, 2), float("nan")))
    with pytest.raises(zoo.ZooError, match="gp-exact"):
        zoo.fit(post.model, (x, y), "nuts")
    with pytest.raises(zoo.ZooError, match="2..5"):
        zoo.load("dgp", data=(x, y), num_layers=1)
    with pytest.raises(zoo.ZooError, match="data="):
        zoo.load("svgp")


def test_gp_exact_with_nuts_recovers_a_known_lengthscale(tmp_path):
    torch.manual_seed(0)
    x = torch.linspace(0, 6, 50).unsqueeze(-1)
    k = torch.exp(-0.5 * (x - x.T) ** 2 / 0.7**2) + 1e-5 * torch.eye(50)
    y = torch.linalg.cholesky(k) @ torch.randn(50) + 0.1 * torch.randn(50)
    zm = zoo.load("gp-exact", data=(x, y))
    post = zoo.fit(zm, (x, y), "nuts", num_warmup=200, num_chains=1, num_samples=200, seed=0, progress=False)
    lengthscale = post.flat_samples()["lengthscale"][:, 0]
    assert 0.5 < float(lengthscale.median()) < 1.0
    assert float(post.flat_samples()["noise"].median()) == pytest.approx(0.1, abs=0.06)
    x_test = torch.linspace(0.5, 5.5, 7).unsqueeze(-1)
    pred = post.predict(x_test)
    truth = torch.linalg.solve(k + 0.01 * torch.eye(50), y)  # the GP mean at the true hyperparameters
    mean = torch.exp(-0.5 * (x_test - x.T) ** 2 / 0.7**2) @ truth
    assert torch.allclose(pred.mean, mean, atol=0.1)
    idata = post.to_arviz((x_test, mean))
    assert idata.posterior["lengthscale"].dims == ("chain", "draw", "input")
    assert idata.log_likelihood["y"].shape == (1, 200, 7)
    again = zoo.load_posterior(post.save(tmp_path / "gp"))  # rebuilt on the training data it saved
    assert torch.equal(again.predict(x_test).mean, pred.mean)


@pytest.mark.parametrize("likelihood", ["bernoulli", "softmax"])
def test_svgp_classifies_xor(likelihood):
    torch.manual_seed(0)
    x = torch.randn(200, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()  # no linear boundary separates the classes
    zm = zoo.load("svgp", data=(x, y), likelihood=likelihood, num_inducing=20, num_classes=2)
    post = zoo.fit(zm, (x, y), num_steps=600, seed=0, num_samples=50, progress=False)
    scores = post.evaluate((x, y))
    assert scores["accuracy"] > 0.9 and scores["nll"] < 0.45


@pytest.mark.parametrize("kernel, gpytorch_kernel", [("rbf", gpytorch.kernels.RBFKernel),
                                                     ("matern52", lambda: gpytorch.kernels.MaternKernel(nu=2.5))])
def test_gp_exact_kernels_are_gpytorchs(kernel, gpytorch_kernel):
    a, b = torch.randn(2, 7, 3, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64)
    reference = gpytorch_kernel().double()
    reference.lengthscale = 1.0
    with torch.no_grad():
        torch.testing.assert_close(unit_kernel(kernel, a, b), reference(a, b).to_dense())
        torch.testing.assert_close(unit_kernel(kernel, a, a, same=True), reference(a, a).to_dense())
