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
