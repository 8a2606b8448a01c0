"""The Laplace precision built in the structure asked for: ``full``, ``diag``, ``kron`` (KFAC) or ``lowrank``,
from the exact Hessian or the Monte Carlo Fisher of the model, and the memory each needs, known before any of
it is allocated."""

from __future__ import annotations

import math

import torch

from .._errors import ZooError
from .curvature import LaplaceTerms, exact_curvature
from .ggn import ggn_rows
from .kfac import capture_layers
from .precisions import Blocks, Dense, Diagonal, Kronecker, LowRank, nystrom

HESSIANS = ("full", "diag", "kron", "lowrank")
# points per block of the Monte Carlo Fisher: its per-point Jacobian takes one backward pass per point through the
# block, so a block of all 7,373 kin8nm points (50 hidden) held 9 GB where blocks of 512 need tens of MB
FISHER_BLOCK = 512
JACOBIAN_BYTES = 2**27  # a block's Jacobian (rows x parameters, float32) stays within 128 MiB
KRON_DENSE_REST = 2000  # kron: the coordinates outside any layer get a dense block up to this many, else diagonal
OVERSAMPLE = 10  # lowrank: probe vectors beyond the rank (Tropp et al. 2017)


def fisher_jacobians(joint: LaplaceTerms, theta, sub, samples: int):
    """Blocks of per-point gradients of the log-likelihood of observations drawn from the model at ``theta``
    (rows x len(sub), float64, over sqrt(samples)): ``sum J^T J`` over them is the Monte Carlo Fisher."""
    rows = min(JACOBIAN_BYTES // 4 // max(len(sub), 1), FISHER_BLOCK)
    for idx in joint.blocks(rows):
        for _ in range(samples):
            y_sim = joint.simulate(theta, idx)
            jac = torch.func.jacrev(
                lambda t, i=idx, ys=y_sim: joint.pointwise(joint.embed(theta, sub, t), i, ys))(theta[sub])
            yield jac.double() / math.sqrt(samples)


def outer_factors(joint: LaplaceTerms, theta, sub, curvature: str, samples: int):
    """Blocks of rows R over ``sub`` whose ``sum R^T R`` is the Monte Carlo Fisher or the exact GGN."""
    if curvature == "ggn":
        return ggn_rows(joint, theta, sub, JACOBIAN_BYTES, FISHER_BLOCK)
    return fisher_jacobians(joint, theta, sub, samples)


def data_curvature(joint: LaplaceTerms, theta, sub, curvature: str, structure: str, samples: int):
    """The likelihood's curvature over coordinates ``sub``: dense or its diagonal, float64 (a float32 sum of
    outer products lost positive definiteness under naval's large noise precision)."""
    size = len(sub)
    total = torch.zeros((size, size) if structure == "full" else size, device=theta.device, dtype=torch.float64)
    if curvature in ("fisher", "ggn"):
        for jac in outer_factors(joint, theta, sub, curvature, samples):
            total += jac.T @ jac if structure == "full" else (jac**2).sum(0)
        return total
    for idx in joint.blocks(JACOBIAN_BYTES // 4 // max(size, 1)):
        total += exact_curvature(lambda t, i=idx: -joint.pointwise(joint.embed(theta, sub, t), i).sum(),
                                 theta[sub], structure)
    return total


def prior_curvature(joint: LaplaceTerms, theta, sub, structure: str):
    """The exact curvature of every prior term that is not a fixed Normal (and of log |J|) over ``sub``."""
    return exact_curvature(lambda t: -joint.other_log_prior(joint.embed(theta, sub, t)), theta[sub], structure)


def build_precision(joint: LaplaceTerms, theta, sub, hessian: str, curvature: str, samples: int, rank: int):
    """The precision over coordinates ``sub`` at ``theta`` in structure ``hessian``."""
    d = joint.normal_precision[sub].double()
    if hessian in ("full", "diag"):
        h = data_curvature(joint, theta, sub, curvature, hessian, samples)
        return (Dense if hessian == "full" else Diagonal)(h + prior_curvature(joint, theta, sub, hessian), d)
    if hessian == "lowrank":
        probes = torch.linalg.qr(torch.randn(len(sub), min(rank + OVERSAMPLE, len(sub)), dtype=torch.float64,
                                             device=theta.device))[0]
        sketch, diagonal = 0.0, 0.0
        for jac in outer_factors(joint, theta, sub, curvature, samples):
            sketch, diagonal = sketch + jac.T @ (jac @ probes), diagonal + (jac**2).sum(0)
        u, s = nystrom(sketch, probes, rank)
        left_out = (diagonal - (u**2 * s).sum(-1)).clamp_min(0)  # the diagonal the eigenpairs do not hold
        return LowRank(u, s, prior_curvature(joint, theta, sub, "diag") + left_out, d)
    return _kronecker(joint, theta, sub, d, samples)


def _kronecker(joint: LaplaceTerms, theta, sub, d, samples: int) -> Blocks:
    """KFAC over every weight site used as a layer (with its bias); a dense (or diagonal) Fisher over the rest."""
    latents = joint.latents
    position = torch.full((latents.dim,), -1, dtype=torch.long, device=theta.device)
    position[sub] = torch.arange(len(sub), device=theta.device)
    site_of = torch.zeros(latents.dim, dtype=torch.long, device=theta.device)
    for k, n in enumerate(latents.names):
        site_of[slice(*latents.spans[n])] = k
    candidates = [n for n in latents.names if bool((position[slice(*latents.spans[n])] >= 0).all())
                  and _kron_ready(joint, n)]
    capture = capture_layers(joint, theta, candidates, samples, joint.blocks(FISHER_BLOCK))
    uses = torch.zeros(latents.dim, dtype=torch.long, device=theta.device)
    for layer in capture.layers:
        uses[layer.order.to(theta.device)] += 1
    # a site is taken when each of its entries is in exactly one layer, and a layer when all its sites are
    taken = {n for n in candidates if n not in capture.unmatched and bool((uses[slice(*latents.spans[n])] == 1).all())}
    parts, covered = [], torch.zeros(len(sub), dtype=torch.bool, device=theta.device)
    for layer in capture.layers:
        coords = layer.order.to(theta.device)
        pos = position[coords]
        if {latents.names[k] for k in site_of[coords].unique().tolist()} <= taken and bool((d[pos] == d[pos[0]]).all()):
            parts.append((pos, Kronecker(*layer.factors, d[pos])))
            covered[pos] = True
    rest = (~covered).nonzero().squeeze(-1)
    if len(rest):
        structure = "full" if len(rest) <= KRON_DENSE_REST else "diag"
        h = data_curvature(joint, theta, sub[rest], "fisher", structure, samples)
        h = h + prior_curvature(joint, theta, sub[rest], structure)
        parts.append((rest, (Dense if structure == "full" else Diagonal)(h, d[rest])))
    return Blocks(parts, len(sub), tied=[pos for pos, part in parts if isinstance(part, Kronecker)])


def _kron_ready(joint: LaplaceTerms, name: str) -> bool:
    """A site KFAC can take: unconstrained, under a fixed Normal prior of one precision (so the prior keeps the
    Kronecker eigenbasis)."""
    a, b = joint.latents.spans[name]
    precision = joint.normal_precision[a:b]
    same_space = math.prod(joint.latents.free_shapes[name]) == math.prod(joint.latents.shapes[name])
    return (same_space and _is_identity(joint.latents.transforms[name]) and bool(joint.is_normal[a:b].all())
            and bool((precision == precision[0]).all()))


def _is_identity(transform) -> bool:
    while hasattr(transform, "base_transform"):
        transform = transform.base_transform
    return not getattr(transform, "parts", [None])


def memory_gib(hessian: str, sizes: dict[str, tuple[int, ...]], rank: int) -> float:
    """What a structure holds at its peak, in GiB, over sites of these shapes: dense float64 matrices for
    full; the Kronecker factors and their eigenvectors (largest dim squared, and the rest) for kron; the probes,
    sketch and factors for lowrank; a few vectors for diag."""
    size = sum(math.prod(s) for s in sizes.values())
    if hessian == "full":
        return 4 * size * size * 8 / 2**30
    if hessian == "lowrank":
        return 4 * size * (rank + OVERSAMPLE) * 8 / 2**30
    if hessian == "kron":
        entries = sum(s[0] ** 2 + (math.prod(s) // s[0]) ** 2 if len(s) > 1 else math.prod(s) ** 2
                      for s in sizes.values())
        return 3 * entries * 8 / 2**30
    return 6 * size * 8 / 2**30


def check_memory(hessian: str, sizes: dict, rank: int, limit_gib: float) -> None:
    """Refuse, before anything is allocated, a structure that needs more than ``limit_gib``, naming what fits."""
    need = memory_gib(hessian, sizes, rank)
    if need <= limit_gib:
        return
    fits = [f"hessian={h!r} ({memory_gib(h, sizes, rank):.3g} GiB)" for h in HESSIANS
            if h != hessian and memory_gib(h, sizes, rank) <= limit_gib]
    count = sum(math.prod(s) for s in sizes.values())
    raise ZooError(f"laplace: hessian={hessian!r} over {count:,} parameters needs about {need:.1f} GiB, more than "
                   f"the {limit_gib:.3g} GiB allowed (memory_limit_gb); "
                   + (f"these fit: {', '.join(fits)}" if fits else "no structure fits")
                   + "; or take subset='last-layer'")
