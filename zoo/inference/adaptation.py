"""Stan's warmup for a batch of chains: dual-averaging step size per chain, and a diagonal or dense inverse
mass matrix estimated over doubling windows, from each chain's draws or from all chains' pooled."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def warmup_windows(num_warmup: int, init_buffer: int = 75, term_buffer: int = 50,
                   base_window: int = 25) -> list[tuple[int, int]]:
    """The (start, end) iterations of the warmup windows whose draws estimate the mass matrix (Stan's
    schedule: a fast start, slow windows doubling in length, a fast end; the buffers shrink to 15 % / 10 %
    for short warmups)."""
    if num_warmup < 20:
        return []
    if init_buffer + base_window + term_buffer > num_warmup:
        init_buffer, term_buffer = int(0.15 * num_warmup), int(0.1 * num_warmup)
        base_window = num_warmup - init_buffer - term_buffer
    ends, start, size = [], init_buffer, base_window
    last = num_warmup - term_buffer
    while start + size <= last:
        if start + 3 * size > last:  # the next window would not fit: this one runs to the end
            size = last - start
        ends.append((start, start + size))
        start, size = start + size, 2 * size
    return ends


@dataclass
class DualAveraging:
    """Nesterov dual averaging of log step size towards an acceptance target (Hoffman & Gelman 2014),
    one per chain."""

    target: float
    log_step: torch.Tensor
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def __post_init__(self):
        self.restart(self.log_step.exp())

    def restart(self, step_size: torch.Tensor) -> None:
        self.mu = torch.log(10 * step_size)
        self.log_step = step_size.log()
        self.log_step_avg = torch.zeros_like(self.log_step)
        self.h_avg = torch.zeros_like(self.log_step)
        self.t = torch.zeros_like(self.log_step)  # updates per chain since the restart

    def update(self, acceptance: torch.Tensor, chains: torch.Tensor | None = None) -> None:
        """One iteration's acceptance rates; of the ``chains`` (a mask) alone if given."""
        t = self.t + (1 if chains is None else chains)
        eta = 1.0 / (t + self.t0)
        h_avg = (1 - eta) * self.h_avg + eta * (self.target - acceptance.nan_to_num(0.0))
        log_step = self.mu - t.sqrt() / self.gamma * h_avg
        weight = t.clamp(min=1) ** -self.kappa
        log_step_avg = weight * log_step + (1 - weight) * self.log_step_avg
        if chains is not None:
            h_avg, log_step, log_step_avg = (torch.where(chains, new, old) for new, old in
                                             ((h_avg, self.h_avg), (log_step, self.log_step),
                                              (log_step_avg, self.log_step_avg)))
        self.t, self.h_avg, self.log_step, self.log_step_avg = t, h_avg, log_step, log_step_avg

    @property
    def step_size(self) -> torch.Tensor:
        return self.log_step.exp()

    @property
    def final_step_size(self) -> torch.Tensor:
        return self.log_step_avg.exp()


class MassEstimate:
    """Running mean and (co)variance of each chain's draws (Welford), turned into a regularised inverse
    mass matrix per chain, pooled over chains if asked (Stan's shrinkage towards 1e-3)."""

    def __init__(self, chains: int, dim: int, dense: bool, pooled: bool, like: torch.Tensor, pool=None):
        self.dense, self.pooled = dense, pooled
        self.pool = pool  # per-chain tensors -> the same of every process's chains (torchrun), for pooling
        self.count = like.new_zeros(chains, 1)  # draws added, per chain
        self.mean = like.new_zeros(chains, dim)
        self.m2 = like.new_zeros(chains, dim, dim) if dense else like.new_zeros(chains, dim)

    def add(self, z: torch.Tensor, chains: torch.Tensor | None = None) -> None:
        """Each chain's point; of the ``chains`` (a mask) alone if given."""
        added = 1 if chains is None else chains.unsqueeze(-1).to(z.dtype)
        self.count = self.count + added
        delta = (z - self.mean) * added
        self.mean = self.mean + delta / self.count.clamp(min=1)
        after = z - self.mean
        self.m2 = self.m2 + (delta.unsqueeze(-1) * after.unsqueeze(-2) if self.dense else delta * after)

    def inverse_mass(self) -> torch.Tensor:
        """Called where every chain has added as many points (the end of a window)."""
        n, m2 = int(self.count.max()), self.m2
        if self.pooled:  # the chains' sums of squares plus their means' spread, for every chain alike
            mean, every = self.pool(self.mean, m2) if self.pool else (self.mean, m2)
            spread = mean - mean.mean(0)
            between = spread.T @ spread if self.dense else (spread**2).sum(0)
            m2 = (every.sum(0) + n * between).expand_as(m2)
            n = n * mean.shape[0]
        covariance = m2 / max(n - 1, 1)
        shrink = 5.0 / (n + 5.0)
        if self.dense:
            eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
            return (1 - shrink) * covariance + 1e-3 * shrink * eye
        return (1 - shrink) * covariance + 1e-3 * shrink
