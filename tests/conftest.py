import os
import tempfile

import pyro
import pytest
import torch

DEVICE = os.environ.get("ZOO_DEVICE", "cpu")
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: one core per worker, not every worker on every core
    torch.set_num_threads(1)

# the suite tests the shipped data, whatever the user's environment points at: no $ZOO_DATA, an empty cache
os.environ.pop("ZOO_DATA", None)
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="zoo-test-cache-")


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
