"""The exact generalised Gauss-Newton matrix of a Pyro model's likelihood: ``sum_i J_i^T F_i J_i``, with J_i the
Jacobian of observation i's distribution parameters in the latents and F_i that distribution's Fisher information
in its parameters (Martens 2020; laplace-torch's and curvlinops' GGN). It is the Monte Carlo Fisher's limit, with
no sampling noise."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

from .._errors import ZooError


def _base(fn):
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn


def _parameters(fn) -> dict[str, torch.Tensor]:
    """The likelihood's parameters the Fisher information is taken in, broadcast to its batch and event shape."""
    fn = _base(fn)
    shape = fn.batch_shape + fn.event_shape
    if type(fn) is dist.Normal:
        return {"loc": fn.loc.expand(shape), "scale": fn.scale.expand(shape)}
    if type(fn) is dist.Bernoulli:
        return {"logits": fn.logits.expand(shape)}
    if type(fn) is dist.Categorical:
        return {"logits": fn.logits.expand(*fn.batch_shape, fn.logits.shape[-1])}
    raise ZooError(f"laplace: curvature='ggn' knows Normal, Bernoulli and Categorical likelihoods, not "
                   f"{type(fn).__name__}; use curvature='fisher' (Monte Carlo) for it")


def _rows(kind: str, params: dict, jacobians: dict) -> torch.Tensor:
    """Rows R with ``R^T R = J^T F J`` for one observed site: J (points..., D) per parameter, F its Fisher."""
    if kind == "Normal":
        scale = params["scale"].unsqueeze(-1)
        # F = diag(1 / sigma^2, 2 / sigma^2) in (loc, scale)
        return torch.cat([(jacobians["loc"] / scale).flatten(0, -2),
                          (jacobians["scale"] * math.sqrt(2) / scale).flatten(0, -2)])
    if kind == "Bernoulli":
        p = torch.sigmoid(params["logits"]).unsqueeze(-1)
        return ((p * (1 - p)).sqrt() * jacobians["logits"]).flatten(0, -2)
    # Categorical: F = diag(p) - p p^T = M M^T with M = diag(sqrt p) - p sqrt(p)^T, so the rows of M^T J are
    # sqrt(p_c) (J_c - sum_k p_k J_k)
    p = params["logits"].softmax(-1).unsqueeze(-1)
    jac = jacobians["logits"]
    return (p.sqrt() * (jac - (p * jac).sum(-2, keepdim=True))).flatten(0, -2)


def ggn_rows(joint, theta, sub, max_bytes: int, max_points: int):
    """Blocks of rows (float64, rows x len(sub)) whose ``sum R^T R`` over the blocks is the GGN over ``sub``."""
    observed = joint.sites.observed
    trace = joint.trace_at(joint.latents.constrain(theta), joint.one_point)
    kinds, size = {}, 0
    for name in observed:
        fn = trace.nodes[name]["fn"]
        size += sum(v.numel() for v in _parameters(fn).values())  # refused here, before any Jacobian
        kinds[name] = type(_base(fn)).__name__
    per_point = max(size // (1 if joint.one_point is not None else joint.num_points), 1)
    for idx in joint.blocks(min(max_bytes // 8 // max(len(sub), 1) // per_point, max_points)):

        def parameters(t, i=idx):
            nodes = joint.trace_at(joint.latents.constrain(joint.embed(theta, sub, t)), i).nodes
            return {n: _parameters(nodes[n]["fn"]) for n in observed}

        jacobians = torch.func.jacrev(parameters)(theta[sub])
        with torch.no_grad():
            values = parameters(theta[sub])
        yield torch.cat([_rows(kinds[n], values[n], jacobians[n]) for n in observed]).double()
