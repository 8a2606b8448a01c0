"""Fits spread over processes with ``torch.distributed``, launched by ``torchrun``: data-parallel SVI (each
process a shard of every batch, gradients averaged) and NUTS / ChEES chains split between processes and
gathered. Outside torchrun (or with one process) nothing here runs.

The process group is the one torchrun describes in the environment (``WORLD_SIZE``, ``RANK``,
``MASTER_ADDR``...), joined on first use: NCCL where CUDA is available, else gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .._errors import ZooError

# how each backend runs under torchrun; the others are refused with the reason
SPLITS = {"svi": "data-parallel", "nuts": "chains", "chees": "chains"}


@dataclass(frozen=True)
class World:
    rank: int
    size: int

    @property
    def leader(self) -> bool:
        """Rank 0: it reports progress and writes the posterior."""
        return self.rank == 0


def join() -> World | None:
    """The processes this fit runs on, or None for one process."""
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_world_size() == 1:
        return None
    return World(dist.get_rank(), dist.get_world_size())


def refusal(backend: str, world: World) -> str | None:
    if backend not in SPLITS:
        return (f"{backend} runs in one process; launch it without torchrun, or use "
                f"{' / '.join(SPLITS)} across the {world.size} processes")
    return None


def from_rank_0(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` with rank 0's values, on every rank (in place)."""
    with torch.no_grad():
        dist.broadcast(tensor, 0)
    return tensor


def from_leader(value):
    """Rank 0's ``value`` (a small picklable one, such as a reason to stop) on every rank."""
    box = [value]
    dist.broadcast_object_list(box, 0)
    return box[0]


def shard(indices: torch.Tensor, world: World) -> tuple[torch.Tensor, float]:
    """This rank's part of a global batch, and its share of the batch's points."""
    local = torch.tensor_split(indices, world.size)[world.rank]
    return local, len(local) / len(indices)


def average(params: list[torch.Tensor], loss: float, share: float) -> tuple[float, bool]:
    """Every rank's gradients and loss, weighted by its share of the batch, summed in one all-reduce: the
    gradient and loss of the whole batch, and whether all of it is finite (on every rank alike)."""
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [torch.tensor([loss], dtype=params[0].dtype, device=params[0].device)]) * share
    dist.all_reduce(flat)
    start = 0
    for p in params:
        p.grad = flat[start:start + p.numel()].view_as(p).clone()
        start += p.numel()
    return float(flat[-1]), bool(torch.isfinite(flat).all())


def split_chains(num_chains: int, world: World) -> tuple[int, int]:
    """This rank's chains: (how many, the first one's index)."""
    if num_chains % world.size:
        raise ZooError(f"num_chains={num_chains} does not split evenly over {world.size} processes; "
                       f"use a multiple of {world.size}")
    per_rank = num_chains // world.size
    return per_rank, world.rank * per_rank


def gather_chains(tensors: dict[str, torch.Tensor], world: World) -> dict[str, torch.Tensor]:
    """Each tensor (chains, ...) of every rank, joined along the chains in rank order."""
    out = {}
    for name, value in tensors.items():
        parts = [torch.empty_like(value) for _ in range(world.size)]
        dist.all_gather(parts, value.contiguous())
        out[name] = torch.cat(parts)
    return out
