"""Point masses whose log density the ELBO skips: a point mass's log density at its own value is 0, and
computing it compares every entry (5 ms a step for the LSTM's 1M-entry embedding, one core). Only for a
guide's own draws: in a model, a Delta's value can differ from its point, and there its log density counts."""

from __future__ import annotations

import pyro.distributions as dist
import pyro.infer.autoguide as ag
from pyro.poutine.messenger import Messenger


def point_mass(value, event_dim: int = 0):
    """A guide's point mass at ``value``, its log density (0 where the guide draws) not computed."""
    return dist.Delta(value, event_dim=event_dim).mask(False)


class _FreePointMasses(Messenger):
    def _pyro_sample(self, msg):
        if type(msg["fn"]) is dist.Delta and not msg["is_observed"]:
            msg["fn"] = msg["fn"].mask(False)


class PointMasses(ag.AutoDelta):
    """``AutoDelta`` (MAP): its point masses have log density 0, so the ELBO skips computing it."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self._pyro_name = "AutoDelta"  # its parameters keep AutoDelta's names (saved posteriors load)

    def forward(self, *args, **kwargs):
        with _FreePointMasses():
            return super().forward(*args, **kwargs)
