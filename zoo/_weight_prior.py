"""The prior of a network's weight: N(0, scale^2) on every entry, the whole weight one event."""

from __future__ import annotations

import math

import torch
from pyro.distributions import TorchDistribution, constraints


class WeightPrior(TorchDistribution):
    """iid ``N(0, scale^2)`` over a weight of shape ``event_shape``: what ``Normal(0, scale).expand(shape)
    .to_event()`` is, with a log density that sums the squares at once. The expanded Normal first builds six
    weight-sized tensors: with its gradient, 12.7 ms per step on the LSTM's 1M-entry embedding against 2.4 ms
    (one core). ``loc`` and ``scale`` are there for code that reads a fixed Normal prior (Laplace)."""

    arg_constraints = {}
    has_rsample = True

    def __init__(self, event_shape, scale: float, device=None, batch_shape=(), validate_args=None):
        self.scale_value, self.device = float(scale), device
        super().__init__(torch.Size(batch_shape), torch.Size(event_shape), validate_args=validate_args)

    @constraints.dependent_property
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def loc(self) -> torch.Tensor:
        return torch.zeros(self.batch_shape + self.event_shape, device=self.device)

    @property
    def scale(self) -> torch.Tensor:
        return torch.full(self.batch_shape + self.event_shape, self.scale_value, device=self.device)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return self.scale ** 2

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(WeightPrior, _instance)
        new.scale_value, new.device = self.scale_value, self.device
        super(WeightPrior, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def rsample(self, sample_shape=()) -> torch.Tensor:
        return torch.randn(self._extended_shape(sample_shape), device=self.device) * self.scale_value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        size = math.prod(self.event_shape)
        constant = size * (math.log(self.scale_value) + 0.5 * math.log(2 * math.pi))
        squares = value.square()
        if self.event_shape:  # (sum over dims=() would sum everything)
            squares = squares.sum(tuple(range(-len(self.event_shape), 0)))
        log_p = squares * (-0.5 / self.scale_value ** 2) - constant
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))
