"""CUDA paths: every backend on the GPU. Skipped without one (ZOO_DEVICE=cuda selects it)."""

import pytest
import torch

import zoo

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("backend, options", [("svi", dict(num_steps=100)),
                                              ("laplace", dict(num_steps=200)),
                                              ("nuts", dict(num_warmup=20, num_chains=1, max_tree_depth=4))])
def test_backends_on_cuda(backend, options):
    data = zoo.datasets.load("yacht", split=0)
    zm = zoo.load("bnn", data=data, hidden=[10])
    post = zoo.fit(zm, data.train, backend, device="cuda", num_samples=50, seed=0, **options)
    assert next(iter(post.samples.values())).is_cuda
    metrics = post.evaluate((data.test.x.cuda(), data.test.y.cuda()))
    assert torch.isfinite(torch.tensor(metrics["test_ll"]))
    assert post.to_arviz(data.test).log_likelihood["y"].shape[-1] == len(data.test)


@pytest.mark.parametrize("name", ["vae", "vae-iaf"])
def test_autoencoder_on_cuda(name):
    data = zoo.datasets.load("mnist-mini", binarize=True, fraction=0.1)
    post = zoo.fit(zoo.load(name, data=data, hidden=[32], latent_dim=4), data.train, num_epochs=1,
                   device="cuda", seed=0)
    assert post.net.decoder.net[0].weight.is_cuda
    assert post.encode(data.test.x[:5]).is_cuda and post.generate(3).is_cuda
    scores = post.evaluate(data.test.x.cuda(), iwae_samples=50)
    assert torch.isfinite(torch.tensor(scores["log_likelihood"]))


@pytest.mark.parametrize("name, backend, options", [("svgp", "svi", dict(num_steps=50)),
                                                    ("dgp", "svi", dict(num_steps=50)),
                                                    ("gp-exact", "nuts", dict(num_warmup=20, num_chains=1))])
def test_gps_on_cuda(name, backend, options):
    data = zoo.datasets.load("yacht", split=0)
    config = {} if name == "gp-exact" else {"num_inducing": 20}
    post = zoo.fit(zoo.load(name, data=data, **config), data.train, backend, device="cuda", num_samples=20,
                   seed=0, **options)
    assert next(iter(post.samples.values())).is_cuda
    assert torch.isfinite(torch.tensor(post.evaluate(data.test)["test_ll"]))
