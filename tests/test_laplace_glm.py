"""Laplace's linearised (GLM) predictive against the Jacobian computed by hand."""

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


def test_glm_predictive_of_a_classifier_averages_linearised_logits():
    torch.manual_seed(1)
    x = torch.randn(60, 2)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = zoo.load("bnn-classifier", in_features=2, out_features=2, hidden=[4])
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
