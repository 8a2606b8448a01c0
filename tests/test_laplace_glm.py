"""Laplace's linearised (GLM) predictive against the Jacobian computed by hand."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import zoo
from zoo import ZooError
from zoo.inference.flat import initial_point


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 40).unsqueeze(-1)
    return x, torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(40)


def _network(theta, x):
    """The bnn's f for hidden=[3], tanh, from the flat vector (w0, b0, w1, b1, precision) written out."""
    w0, b0, w1, b1 = theta[:3].view(3, 1), theta[3:6], theta[6:9].view(1, 3), theta[9:10]
    return (torch.tanh(x @ w0.T + b0) @ w1.T + b1)[:, 0]


@pytest.fixture(scope="module")
def glm(data):
    model = zoo.load("bnn", in_features=1, hidden=[3], activation="tanh")
    return zoo.fit(model, data, "laplace", hessian="full", curvature="fisher", predictive="glm",
                   optimizer="lbfgs", num_samples=400, seed=0)


def test_glm_predictive_is_the_network_linearised_at_the_map(glm, data):
    x = torch.linspace(-3, 3, 7).unsqueeze(-1)
    latents, _ = initial_point(glm.model.model, data, glm.sites, glm.model.init_loc_fn)
    assert latents.names == ["w0", "b0", "w1", "b1", "precision"]
    theta_map = glm.params["laplace.loc"]
    jac = torch.autograd.functional.jacobian(lambda t: _network(t, x), theta_map)  # (7, 11), zero for precision
    offsets = latents.pack(glm.flat_samples()) - theta_map
    by_hand = _network(theta_map, x) + offsets @ jac.T  # f_lin at every draw

    pred = glm.predict(x)
    target_shift, target_scale = glm.target_scale
    assert torch.allclose(pred.mean, by_hand.mean(0) * target_scale + target_shift, atol=1e-4)
    epistemic = by_hand.var(0, unbiased=False).sqrt() * target_scale
    assert torch.allclose(pred.epistemic_std, epistemic, rtol=1e-3, atol=1e-5)
    # and the draws' spread is J Sigma J^T with Sigma the inverse of the Laplace precision
    sigma = torch.linalg.inv(glm.params["laplace.precision"].double())
    closed = torch.einsum("np,pq,nq->n", jac.double(), sigma, jac.double()).sqrt().float() * target_scale
    assert torch.allclose(pred.epistemic_std, closed, rtol=0.15)


def test_glm_and_nn_predictives_share_the_fit(data, glm):
    nn = zoo.fit(glm.model, data, "laplace", hessian="full", curvature="fisher", optimizer="lbfgs", predictive="nn",
                 num_samples=400, seed=0)
    assert torch.equal(nn.params["laplace.loc"], glm.params["laplace.loc"])
    assert nn.info["predictive"] == "nn" and glm.info["predictive"] == "glm"
    assert glm.evaluate(data)["test_ll"] > nn.evaluate(data)["test_ll"]


def _classifier():
    """A small classifier and two linearly separable classes."""
    torch.manual_seed(1)
    x = torch.randn(60, 2)
    return zoo.load("bnn-classifier", in_features=2, out_features=2, hidden=[4]), (x, (x[:, 0] + x[:, 1] > 0).long())


def test_glm_predictive_of_a_classifier_averages_linearised_logits():
    model, (x, y) = _classifier()
    post = zoo.fit(model, (x, y), "laplace", predictive="glm", num_samples=200, seed=0)
    pred = post.predict(x)
    assert pred.draw_probs.shape == (200, 60, 2)
    assert torch.allclose(pred.probs.sum(-1), torch.ones(60))
    assert (pred.mean == y).float().mean() > 0.9


def test_glm_survives_save_and_load(glm, tmp_path):
    x = torch.linspace(-3, 3, 7).unsqueeze(-1)
    glm.save(tmp_path / "glm")
    again = zoo.Posterior.load(tmp_path / "glm")
    assert torch.allclose(again.predict(x).epistemic_std, glm.predict(x).epistemic_std)


def test_glm_refuses_a_model_without_a_network_output():
    def model(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)

    x = torch.randn(20)
    with pytest.raises(ZooError, match="pyro.deterministic\\('f'"):
        zoo.fit(model, (x, 2 * x), "laplace", predictive="glm")


def test_closed_form_glm_is_j_sigma_jt_and_its_normal(glm, data):
    x = torch.linspace(-3, 3, 7).unsqueeze(-1)
    closed = zoo.fit(glm.model, data, "laplace", at=glm, predictive="glm", glm_approx="closed", num_samples=10,
                     seed=0)
    theta_map = glm.params["laplace.loc"]
    jac = torch.autograd.functional.jacobian(lambda t: _network(t, x), theta_map).double()
    root = closed.params["laplace.root"].double()  # R R^T = Sigma (tested against the precision elsewhere)
    sigma = root @ root.T
    shift, scale = glm.target_scale
    pred = closed.predict(x)
    by_hand = torch.einsum("np,pq,nq->n", jac, sigma, jac).sqrt() * scale
    torch.testing.assert_close(pred.epistemic_std.double(), by_hand, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pred.mean, _network(theta_map, x) * scale + shift, rtol=1e-5, atol=1e-5)
    precision = float(theta_map[-1:].exp())  # the noise at the MAP (its unconstrained coordinate is the log)
    torch.testing.assert_close(pred.aleatoric_std, torch.full((7,), precision**-0.5 * scale), rtol=1e-4, atol=1e-6)
    y = torch.sin(2 * x[:, 0])
    total = (pred.epistemic_std**2 + pred.aleatoric_std**2).sqrt()
    by_hand = dist.Normal((pred.mean - shift) / scale, total / scale).log_prob((y - shift) / scale) - torch.log(
        torch.tensor(scale))
    assert closed.evaluate((x, y))["test_ll"] == pytest.approx(float(by_hand.mean()), abs=1e-4)


def test_probit_glm_of_a_classifier():
    model, (x, y) = _classifier()
    fitted = zoo.fit(model, (x, y), "laplace", predictive="glm", num_samples=10, seed=0)
    # the same curvature: from the same point and seed
    mc = zoo.fit(model, (x, y), "laplace", predictive="glm", num_samples=4000, at=fitted, seed=0)
    probit = zoo.fit(model, (x, y), "laplace", predictive="glm", glm_approx="closed", at=fitted, seed=0)
    torch.testing.assert_close(probit.params["laplace.precision"], mc.params["laplace.precision"])
    assert probit.predict(x).draw_probs.shape == (1, 60, 2)
    # softmax(mean / sqrt(1 + pi var / 8)) of the linearised logits, their moments read off 4,000 Gaussian draws
    _, logits, _ = mc.predictive_runner.linearize(mc.flat_samples(), (x, None))
    by_hand = (logits.mean(0) / (1 + math.pi / 8 * logits.var(0)).sqrt()).softmax(-1)
    torch.testing.assert_close(probit.predict(x).probs, by_hand, atol=0.01, rtol=0)
    assert probit.info["glm_approx"] == "closed"


def test_ggn_is_the_jacobian_outer_product_by_hand(data, glm):
    """curvature='ggn' on the tanh net: J^T J / sigma^2 over the weights, N / 2 for the log noise precision (the
    Normal's Fisher in its scale), nothing between them."""
    post = zoo.fit(glm.model, data, "laplace", curvature="ggn", at=glm, tune_prior=False, predictive="glm", seed=0)
    theta = post.params["laplace.loc"]
    x = data[0]
    jac = torch.autograd.functional.jacobian(lambda t: _network(t, x), theta)[:, :10].double()
    precision = float(torch.exp(theta[10]))  # the fifth site, unconstrained by log
    by_hand = torch.zeros(11, 11, dtype=torch.float64)
    by_hand[:10, :10] = precision * jac.T @ jac
    by_hand[10, 10] = len(x) / 2
    # plus the priors' curvature: 1 for each N(0, 1) weight; b * precision for Gamma(a, b) in log precision
    by_hand += torch.diag(torch.tensor([1.0] * 10 + [0.01 * precision], dtype=torch.float64))
    assert torch.allclose(post.params["laplace.precision"].double(), by_hand, rtol=1e-4, atol=1e-3)


def test_ggn_of_a_logistic_regression_is_its_exact_hessian():
    """A canonical-link GLM is linear in its parameters, so its GGN and its exact Hessian are one matrix."""
    torch.manual_seed(0)
    x = torch.randn(80, 3)
    y = torch.bernoulli(torch.sigmoid(x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3))
    model = zoo.load("logistic-regression", in_features=3)
    exact = zoo.fit(model, (x, y), "laplace", curvature="exact", tune_prior=False, seed=0)
    ggn = zoo.fit(model, (x, y), "laplace", curvature="ggn", at=exact, tune_prior=False, seed=0)
    assert torch.allclose(ggn.params["laplace.precision"], exact.params["laplace.precision"], rtol=1e-4, atol=1e-4)


def test_ggn_of_a_softmax_classifier_is_the_categorical_fisher_by_hand():
    """Softmax regression: sum_n (diag p_n - p_n p_n^T) kron [x_n, 1][x_n, 1]^T, in class-major order."""
    torch.manual_seed(0)
    x, y = torch.randn(30, 2), torch.randint(0, 3, (30,))
    model = zoo.load("bnn-classifier", in_features=2, out_features=3, hidden=[])
    post = zoo.fit(model, (x, y), "laplace", curvature="ggn", tune_prior=False, optimizer="lbfgs", seed=0)
    latents, _ = initial_point(model.model, (x, y), post.sites, model.init_loc_fn)
    assert latents.names == ["w0", "b0"]  # w0 is (3 classes, 2 inputs), flattened by row; then b0
    values = latents.constrain(post.params["laplace.loc"])
    p = torch.softmax(x @ values["w0"].T + values["b0"], -1).double()
    inputs = torch.cat([x, torch.ones(30, 1)], 1).double()
    by_hand = sum(torch.kron(torch.diag(p[n]) - torch.outer(p[n], p[n]), torch.outer(inputs[n], inputs[n]))
                  for n in range(30))
    order = torch.tensor([0, 1, 6, 2, 3, 7, 4, 5, 8])  # (w_c1, w_c2, b_c) for each class c
    got = post.params["laplace.precision"].double()[order][:, order] - torch.eye(9, dtype=torch.float64)
    assert torch.allclose(got, by_hand, atol=1e-4)
