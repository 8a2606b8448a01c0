"""The linearised (GLM) predictive of a Laplace fit (Immer, Korzepa & Bauer 2021; Daxberger et al. 2021).

At each Gaussian draw theta the network's output is replaced by its first-order expansion at the MAP,
``f(x, theta*) + J(x) (theta - theta*)``, and the model's likelihood is applied to that. The output is the
deterministic site ``f`` (regression) or ``logits`` (classification) that the zoo's networks record, and a
user's model can record the same way. The Jacobian-vector products come from one forward-mode pass over
every draw at once. With a Normal likelihood the draws are a Monte Carlo form of the closed-form
``N(f*, J Sigma J^T + sigma^2)``; with a categorical one, the MC link approximation.
"""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.autograd.forward_ad as fwad
from pyro import poutine
from pyro.poutine.messenger import Messenger

from .._errors import ZooError
from .draws import DrawRunner
from .flat import FlatLatents

OUTPUT_SITES = ("f", "logits")  # what the linearised predictive expands: the network's output


def output_site(trace: poutine.Trace) -> str:
    """The network-output site of a model's trace; a clear error where it records none."""
    for name in OUTPUT_SITES:
        if name in trace.nodes:
            return name
    raise ZooError("predictive='glm' linearises the network's output, which the model must record as "
                   "pyro.deterministic('f', out, event_dim=0) (regression) or pyro.deterministic('logits', out, "
                   "event_dim=1) (classification) before its likelihood uses it; this model records neither, so "
                   "use predictive='nn'")


class _Unsampled(Messenger):
    """Observed sites left unsampled (zeros) where there are no observations: the linearising pass reads the
    output only, and some samplers (the Gamma inside a Student-t) have no forward-mode derivative."""

    def __init__(self, names):
        super().__init__()
        self.names = set(names)

    def _pyro_sample(self, msg):
        if msg["name"] in self.names and msg["value"] is None:
            msg["value"] = torch.zeros(msg["fn"].shape())


class LinearizedRunner:
    """``run(draws, args, extract)`` as :class:`DrawRunner`'s, with the model's output site set, draw by draw,
    to its linearisation at ``theta_map`` (flat, unconstrained: the Laplace mean)."""

    def __init__(self, model, sites, path: str, theta_map: torch.Tensor):
        self.model, self.sites, self.path, self.theta_map = model, sites, path, theta_map

        def unsampled(*args):
            with _Unsampled(sites.observed):
                return model(*args)

        self.outputs = DrawRunner(unsampled, sites, path)  # the linearising pass

    def _latents(self, draws: dict, args: tuple) -> FlatLatents:
        trace = poutine.trace(poutine.condition(self.model, {k: v[0] for k, v in draws.items()})).get_trace(*args)
        return FlatLatents.from_trace(trace, list(self.sites.latent))

    def linearize(self, draws: dict, args: tuple, indices=None) -> tuple[str, torch.Tensor, int]:
        """The output site's name, its linearised value at every draw (S, ...), and its event dim."""
        latents = self._latents(draws, args)
        theta = latents.pack(draws)
        found = {}

        def read(trace, _):
            name = found.setdefault("name", output_site(trace))
            found["event_dim"] = trace.nodes[name]["fn"].event_dim
            return {name: trace.nodes[name]["value"]}

        with fwad.dual_level():
            primal = self.theta_map.to(theta).expand_as(theta).clone()
            with warnings.catch_warnings():  # torch 2.14's first dual tensor scripts decompositions it deprecates
                warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
                dual = fwad.make_dual(primal, theta - primal)
            values = latents.constrain(dual)
            out = self.outputs.run(values, args, read, indices)
            value, tangent = fwad.unpack_dual(out[found["name"]])
        if tangent is None:  # the output does not depend on the latents
            tangent = torch.zeros_like(value)
        return found["name"], value + tangent, found["event_dim"]

    def run(self, draws: dict, args: tuple, extract, indices=None, shapes=None) -> dict[str, torch.Tensor]:
        name, linear, event_dim = self.linearize(draws, args, indices)
        output = {name: (tuple(linear.shape[1:]), event_dim)}  # conditioned like a latent, draw by draw
        runner = DrawRunner(self.model, dataclasses.replace(self.sites, latent={**self.sites.latent, **output}),
                            self.path)
        return runner.run({**draws, name: linear}, args, extract, indices, shapes)
