"""NetworkModel: the contract shared by the weight-site networks (LeNet, LSTM) whose draws are whole networks."""

from __future__ import annotations

import math

from .._model import ZooModel


class NetworkModel(ZooModel):
    """A network whose every weight is a latent site (``model.sites``): NUTS is refused above ``MAX_NUTS_WEIGHTS``
    weights (point sites not counted), where it would take days."""

    MAX_NUTS_WEIGHTS = 5_000
    kind = "network"

    def refusal(self, backend):
        count = sum(math.prod(site.shape) for site in self.model.sites if not site.point)
        if backend == "nuts" and count > self.MAX_NUTS_WEIGHTS:
            return (f"this {self.kind} has {count:,} weights; NUTS over that many dimensions would take days. "
                    f"Use svi or laplace, or a tiny config (at most {self.MAX_NUTS_WEIGHTS:,} weights)")
        return super().refusal(backend)
