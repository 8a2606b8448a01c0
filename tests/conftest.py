import os

import pyro
import pytest
import torch

DEVICE = os.environ.get("ZOO_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def fresh_pyro():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def device():
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("ZOO_DEVICE=cuda but no CUDA device is available")
    return DEVICE


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip)
