"""Random numbers per chain that do not depend on how many chains run beside it.

A batched sampler draws for all chains in one tensor operation, so one torch generator cannot serve:
the numbers chain 3 gets would change with the number of chains. Instead every number is a hash of
(chain seed, counter) -- splitmix64's finaliser, a counter-based generator in the manner of Philox --
computed for all chains at once on their device.
"""

from __future__ import annotations

import math

import torch

_GOLDEN = 0x9E3779B97F4A7C15 - 2**64  # constants as two's-complement int64: torch has no uint64 arithmetic
_MIX1 = 0xBF58476D1CE4E5B9 - 2**64
_MIX2 = 0x94D049BB133111EB - 2**64


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


class ChainRandom:
    """Uniforms and normals for chains ``first .. first + C - 1``: ``uniform(counter, n)`` is (C, n), a pure
    function of the seed, the chain's number, the counter and the column, whatever else runs. Callers give
    every use its own counter."""

    def __init__(self, seed: int, chains: int, device=None, first: int = 0):
        self.first = first
        numbers = torch.arange(first, first + chains, dtype=torch.int64, device=device)
        self.keys = _mix(_mix(torch.tensor(seed, dtype=torch.int64, device=device)) + numbers * _GOLDEN)

    def uniform(self, counter, n: int, dtype=torch.float64) -> torch.Tensor:
        """(C, n) uniforms in (0, 1) at an int ``counter``; (C, *S, n) at a tensor of counters of shape S."""
        counter = torch.as_tensor(counter, dtype=torch.int64, device=self.keys.device)
        columns = torch.arange(1, n + 1, dtype=torch.int64, device=self.keys.device)
        return uniforms(self.keys, counter, columns.expand(*counter.shape, n), dtype)

    def normal(self, counter, n: int, dtype=torch.float64) -> torch.Tensor:
        """Standard normals shaped as ``uniform``'s (Box-Muller on two columns of uniforms each): drawn at
        many counters in one call, each is the number drawn at its counter alone."""
        return box_muller(self.uniform(counter, 2 * n, torch.float64), dtype)

    def normal_per_chain(self, counter: torch.Tensor, n: int, dtype=torch.float64) -> torch.Tensor:
        """(C, *S, n) standard normals, chain c's at its own counters ``counter[c]`` (shape S): the numbers
        ``normal`` draws there."""
        columns = torch.arange(1, 2 * n + 1, dtype=torch.int64, device=self.keys.device)
        return box_muller(uniforms(self.keys, counter, columns.expand(*counter.shape, -1), per_chain=True), dtype)


def box_muller(u: torch.Tensor, dtype) -> torch.Tensor:
    """Standard normals from 2n columns of uniforms: n of them."""
    n = u.shape[-1] // 2
    return (torch.sqrt(-2 * torch.log(u[..., :n])) * torch.cos(2 * math.pi * u[..., n:])).to(dtype)


def uniforms(keys: torch.Tensor, counter: torch.Tensor, columns: torch.Tensor, dtype=torch.float64,
             per_chain: bool = False) -> torch.Tensor:
    """(C, *S, m) uniforms in (0, 1) of the chains with ``keys`` at int64 counters of shape S and ``columns``
    (numbered from 1) of shape (*S, m): tensor code only, so that a compiled step can draw its own.
    ``per_chain``: the counters are (C, *S), each chain's own, and the columns (C, *S, m)."""
    shape = counter.shape[1:] if per_chain else counter.shape
    start = _mix(keys.view(-1, *[1] * len(shape)) + _mix(counter))
    bits = _shift_right(_mix(start.unsqueeze(-1) + columns * _GOLDEN), 11)  # the top 53 bits
    return ((bits.to(torch.float64) + 0.5) * 2.0**-53).to(dtype)
