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
import math
import warnings

import pyro.distributions as dist
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
            base = msg["fn"]
            while hasattr(base, "base_dist"):  # Independent, masked
                base = base.base_dist
            device = next((v.device for v in vars(base).values() if isinstance(v, torch.Tensor)), None)
            msg["value"] = torch.zeros(msg["fn"].shape(), device=device)  # on the likelihood's device (CUDA)


class LinearizedRunner:
    """``run(draws, args, extract)`` as :class:`DrawRunner`'s, with the model's output site set, draw by draw,
    to its linearisation at ``theta_map`` (flat, unconstrained: the Laplace mean).

    With ``root`` (a square root of the Gaussian's covariance over the flat coordinates ``coordinates``) it is
    the closed form instead: the output's exact mean ``f*`` and variance ``diag(J Sigma J^T)``, pushed through
    the likelihood as one draw: ``Normal(f*, sqrt(sigma^2 + var))`` for regression, the probit approximation
    ``softmax(f* / sqrt(1 + pi var / 8))`` for a classifier (MacKay 1992; Daxberger et al. 2021).
    """

    def __init__(self, model, sites, path: str, theta_map: torch.Tensor, root=None, coordinates=None):
        self.model, self.sites, self.path, self.theta_map = model, sites, path, theta_map
        self.root, self.coordinates = root, coordinates

        def unsampled(*args):
            with _Unsampled(sites.observed):
                return model(*args)

        self.outputs = DrawRunner(unsampled, sites, path)  # the linearising pass

    def _latents(self, draws: dict, args: tuple) -> FlatLatents:
        trace = poutine.trace(poutine.condition(self.model, {k: v[0] for k, v in draws.items()})).get_trace(*args)
        return FlatLatents.from_trace(trace, list(self.sites.latent))

    def _jvp(self, latents, tangent, args, indices):
        """The output site's name, value at the MAP and its derivative along each row of ``tangent`` (S, D),
        and its event dim: one forward-mode pass."""
        found = {}

        def read(trace, _):
            name = found.setdefault("name", output_site(trace))
            found["event_dim"] = trace.nodes[name]["fn"].event_dim
            return {name: trace.nodes[name]["value"]}

        with fwad.dual_level():
            primal = self.theta_map.to(tangent).expand_as(tangent).clone()
            with warnings.catch_warnings():  # torch 2.14's first dual tensor scripts decompositions it deprecates
                warnings.filterwarnings("ignore", message=".*torch.jit.script. is deprecated", category=FutureWarning)
                dual = fwad.make_dual(primal, tangent)
            out = self.outputs.run(latents.constrain(dual), args, read, indices)
            value, derivative = fwad.unpack_dual(out[found["name"]])
        if derivative is None:  # the output does not depend on the latents
            derivative = torch.zeros_like(value)
        return found["name"], value, derivative, found["event_dim"]

    def linearize(self, draws: dict, args: tuple, indices=None) -> tuple[str, torch.Tensor, int]:
        """The output site's name, its linearised value at every draw (S, ...), and its event dim."""
        latents = self._latents(draws, args)
        theta = latents.pack(draws)
        name, value, derivative, event_dim = self._jvp(latents, theta - self.theta_map.to(theta), args, indices)
        return name, value + derivative, event_dim

    def moments(self, latents: FlatLatents, args: tuple, indices=None, chunk: int = 256):
        """The output site's name, its mean ``f*`` and exact variance ``diag(J Sigma J^T)`` (shaped as one
        output), and its event dim: forward mode along the columns of the covariance's root, in chunks."""
        root = self.root.to(self.theta_map)
        variance = 0.0
        for start in range(0, root.shape[1], chunk):
            columns = root[:, start:start + chunk].T
            tangent = columns.new_zeros(columns.shape[0], self.theta_map.numel())
            tangent[:, self.coordinates] = columns
            name, value, derivative, event_dim = self._jvp(latents, tangent, args, indices)
            variance = variance + (derivative**2).sum(0)
        return name, value[0], variance, event_dim

    def run(self, draws: dict, args: tuple, extract, indices=None, shapes=None) -> dict[str, torch.Tensor]:
        if self.root is not None:
            return self._closed_form(draws, args, extract, indices)
        name, linear, event_dim = self.linearize(draws, args, indices)
        return self._conditioned(name, linear, event_dim).run({**draws, name: linear}, args, extract, indices, shapes)

    def _conditioned(self, name, value, event_dim) -> DrawRunner:
        """The model with its output site conditioned like a latent, draw by draw."""
        output = {name: (tuple(value.shape[1:]), event_dim)}
        return DrawRunner(self.model, dataclasses.replace(self.sites, latent={**self.sites.latent, **output}),
                          self.path)

    def _closed_form(self, draws, args, extract, indices):
        latents = self._latents(draws, args)
        name, mean, variance, event_dim = self.moments(latents, args, indices)
        at_map = {k: v.unsqueeze(0) for k, v in latents.constrain(self.theta_map.to(mean)).items()}
        runner = self._conditioned(name, mean.unsqueeze(0), event_dim)
        with _ClosedForm(self.sites.observed, mean, variance):
            out = runner.run({**at_map, name: mean.unsqueeze(0)}, args, extract, indices)
        if "variance" in out:  # the likelihood's own part, with the weights' part beside it
            out["variance"] = out["variance"] - variance
            out["linearised_variance"] = variance.expand_as(out["variance"])
        return out


class _ClosedForm(Messenger):
    """The observed sites' likelihood, given the linearised output's mean and variance, in closed form."""

    def __init__(self, names, mean, variance):
        super().__init__()
        self.names, self.mean, self.variance = set(names), mean, variance

    def _pyro_sample(self, msg):
        if msg["name"] not in self.names:
            return
        fn, dims = msg["fn"], 0
        while isinstance(fn, dist.Independent):
            fn, dims = fn.base_dist, dims + fn.reinterpreted_batch_ndims
        if isinstance(fn, dist.Normal) and fn.loc.shape == self.mean.shape and torch.allclose(fn.loc, self.mean):
            new = dist.Normal(fn.loc, (fn.scale**2 + self.variance).sqrt())
        elif isinstance(fn, (dist.Categorical, dist.Bernoulli)) and _logits_of(fn, self.mean):
            new = type(fn)(logits=self.mean / (1 + math.pi / 8 * self.variance).sqrt())
        else:
            raise ZooError(f"glm_approx='closed' needs the likelihood of {msg['name']!r} to be Normal(f, sigma) or "
                           "Categorical / Bernoulli(logits=...) of the network's output; use glm_approx='mc'")
        msg["fn"] = new.to_event(dims) if dims else new


def _logits_of(fn, output) -> bool:
    """Whether ``fn``'s logits are the network's output (up to the softmax's normalisation)."""
    if isinstance(fn, dist.Bernoulli):
        return fn.logits.shape == output.shape and torch.allclose(fn.logits, output)
    return fn.logits.shape == output.shape and torch.allclose(fn.logits, output.log_softmax(-1), atol=1e-5)
