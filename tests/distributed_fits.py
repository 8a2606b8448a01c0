"""Fits run under ``torchrun`` by tests/test_distributed.py: python distributed_fits.py OUT. Rank 0 saves what the
test compares with the same fits in one process; the fits themselves are in ``FITS``, shared by both."""

from __future__ import annotations

import sys

import pyro
import pyro.distributions as dist
import torch

import zoo


def regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    return x, x @ torch.tensor([1.0, -1.0]) + 0.5 + 0.3 * torch.randn(64, generator=g)


def linear(x, y=None):
    """Elementwise only (no matmul, whose kernels round differently at different batch sizes), so that a chain's
    numbers do not depend on how many chains share its process."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", x.shape[0]) as idx:
        mean = x[idx, 0] * w[..., :1] + x[idx, 1] * w[..., 1:] + b.unsqueeze(-1)
        return pyro.sample("y", dist.Normal(mean, 0.3), obs=None if y is None else y[idx])


def fits() -> dict:
    """The same four fits, wherever they run: what each keeps."""
    data = regression_data()
    # init="prior": one process would start at the MAP, which svi under torchrun does not search for
    delta = zoo.fit(linear, data, guide="delta", num_steps=60, lr=0.05, elbo_step="pyro", seed=1, num_samples=5,
                    init="prior")
    field = zoo.fit(linear, data, guide="mean-field", num_steps=60, batch_size=16, seed=2, num_samples=5)
    nuts = zoo.fit(linear, data, backend="nuts", num_chains=4, num_warmup=60, num_samples=40, seed=3)
    chees = zoo.fit(linear, data, backend="chees", num_chains=4, num_warmup=100, num_samples=40, seed=4)
    return {"delta_loss": torch.tensor(delta.loss), "delta_w": delta.params["AutoDelta.w"]
            if "AutoDelta.w" in delta.params else delta.samples["w"][0, 0],
            "field_loss": torch.tensor(field.loss), "field_params": {k: v for k, v in field.params.items()},
            "nuts_w": nuts.samples["w"], "nuts_stats": nuts.sample_stats["tree_depth"],
            "chees_w": chees.samples["w"], "chees_steps": chees.sample_stats["n_steps"],
            "chees_length": chees.info["trajectory_length"]}


if __name__ == "__main__":
    result = fits()
    rank = torch.distributed.get_rank()
    params = torch.cat([v.reshape(-1) for v in result["field_params"].values()])
    everyone = [torch.empty_like(params) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(everyone, params)
    result["field_params_equal_on_ranks"] = all(torch.equal(everyone[0], p) for p in everyone)
    try:
        zoo.fit(linear, regression_data(), batch_size=1, num_steps=1)
    except zoo.ZooError as err:
        result["one_point_batches"] = str(err)
    if rank == 0:
        torch.save(result, sys.argv[1])
    torch.distributed.destroy_process_group()
