"""GenerativePosterior: what an autoencoder's fit returns. Trained networks, per-point codes on demand,
importance-weighted log-likelihoods, and ArviZ groups over codes of chosen points."""

from __future__ import annotations

import copy
import math

import pyro
import torch
from pyro import poutine
from pyro.poutine.subsample_messenger import _Subsample

from .._errors import ZooError
from .posterior import Posterior

# rows (points x importance samples) per vectorised pass: bounded memory for any k
ROWS = 16384


class GenerativePosterior(Posterior):
    """The fit of an autoencoder: encoder and decoder at their trained weights (``params``).

    There are no global latents: the posterior over a point's code is the amortised guide q(z | x),
    drawn on demand. ``encode``, ``reconstruct`` and ``generate`` use point codes; ``evaluate``
    and ``log_likelihood`` give importance-weighted estimates of log p(x) (Burda et al. 2016).

    Examples
    --------
    >>> import zoo
    >>> data = zoo.datasets.load("mnist-mini", binarize=True, flatten=True)
    >>> vae = zoo.load("vae", data=data, latent_dim=2, hidden=[32])
    >>> post = zoo.fit(vae, data.train, num_epochs=1, seed=0)
    >>> post.encode(data.test.x[:5]).shape
    torch.Size([5, 2])
    >>> sorted(post.evaluate(data.test, iwae_samples=10))
    ['elbo', 'log_likelihood', 'reconstruction_mse']
    """

    def __init__(self, model, samples, **kwargs):
        super().__init__(model, samples, **kwargs)
        self.net = copy.deepcopy(model.network)
        model.load_params(self.params, {name: getattr(self.net, name) for name in model.modules})
        self.code_family = self.options.get("guide") or (model.card.default_guide if model.card else None)
        if self.code_family not in model.guides:
            raise ZooError(f"{model.name}: a posterior needs one of the model's own guides {sorted(model.guides)}, "
                           f"got {self.code_family!r}")
        self.guide = self.net.guide_for(self.code_family)

    @property
    def num_chains(self) -> int:
        return 1

    @property
    def num_draws(self) -> int:
        return 0

    def _points(self, data, scored: bool = True) -> torch.Tensor:
        """The flattened points of ``data`` (a Split, an array or ``(x,)``), checked: their shape, and
        when ``scored`` by the likelihood also its support (an encoder may read any input, e.g. noisy ones)."""
        args, _ = self.model.arguments(data, self.net.decoder.net[0].weight.device)
        if scored:
            self.model.validate(args, scored=True)
        else:
            self.net.check_inputs(self.model.name, args)
        return self.net.flat(args[0])

    def _shaped(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.reshape(*flat.shape[:-1], *self.net.input_shape)

    def encode(self, x) -> torch.Tensor:
        """Point codes (points, latent_dim): q's mean (its mode for a Delta; the flows of q's base
        mean for ``iaf``)."""
        return self.net.code(self._points(x, scored=False), self.code_family)

    @torch.no_grad()
    def reconstruct(self, x) -> torch.Tensor:
        """The decoder's mean at each point's code, shaped like ``x``: E[x | z = encode(x)]."""
        return self._shaped(self.net.decoder(self.encode(x)).mean)

    @torch.no_grad()
    def generate(self, n: int, seed: int | None = None) -> torch.Tensor:
        """``n`` new points: the decoder's mean at codes drawn from the prior, shaped like the data."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ZooError(f"generate: n must be a positive integer, got {n!r}")
        device = self.net.decoder.net[0].weight.device
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            z = self.net.prior(device).sample((n,))
        return self._shaped(self.net.decoder(z).mean)

    @torch.no_grad()
    def latents(self, x, num_samples: int = 100) -> torch.Tensor:
        """Draws from q(z | x) for every point: (num_samples, points, latent_dim)."""
        flat = self._points(x, scored=False)
        with pyro.get_param_store().scope(), pyro.plate("_draws", num_samples, dim=-2):
            return poutine.trace(self.guide).get_trace(flat).nodes["z"]["value"].expand(num_samples, -1, -1)

    @torch.no_grad()
    def _log_weights(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        """log p(x, z_j) - log q(z_j | x) for k codes z_j ~ q of each point: (k, points)."""
        with pyro.get_param_store().scope(), pyro.plate("_samples", k, dim=-2):
            guide_trace = poutine.trace(self.guide).get_trace(flat)
            log_q = _log_density(guide_trace)
            model_trace = poutine.trace(poutine.replay(self.net.model, trace=guide_trace)).get_trace(flat)
        return (_log_density(model_trace) - log_q).expand(k, flat.shape[0])

    def _bounds(self, flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per point of the checked ``flat`` points: the IWAE estimate of log p(x) with ``k`` samples and the
        ELBO from the same samples."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ZooError(f"iwae_samples must be a positive integer, got {k!r}")
        chunk = min(k, ROWS)
        points = max(1, ROWS // chunk)
        iwae, elbo = [], []
        for start in range(0, flat.shape[0], points):
            block = flat[start:start + points]
            lse = torch.full((block.shape[0],), -math.inf, device=flat.device)
            total = torch.zeros(block.shape[0], device=flat.device)
            for done in range(0, k, chunk):
                log_w = self._log_weights(block, min(chunk, k - done))
                lse = torch.logaddexp(lse, torch.logsumexp(log_w, 0))
                total += log_w.sum(0)
            iwae.append(lse - math.log(k))
            elbo.append(total / k)
        return torch.cat(iwae), torch.cat(elbo)

    def log_likelihood(self, data, iwae_samples: int = 1000) -> torch.Tensor:
        """Per-point estimates of log p(x): the IWAE bound with ``iwae_samples`` codes per point,
        computed in blocks so memory stays bounded for any k (k = 5,000 as in Burda et al.)."""
        if self.code_family == "delta":
            raise ZooError("log_likelihood: the delta guide gives point codes with no density, so there is no "
                           "importance-weighted log p(x); fit with guide='laplace' or 'normal'")
        return self._bounds(self._points(data), iwae_samples)[0]

    def evaluate(self, data, iwae_samples: int = 1000) -> dict[str, float]:
        """Per-point averages over ``data``: ``elbo``, ``log_likelihood`` (IWAE, k = ``iwae_samples``;
        nats, higher is better) and ``reconstruction_mse`` (per entry, at the point codes).

        With a Delta guide there is no density to weight by: ``elbo`` is then the MAP objective
        log p(x, h*) and ``log_likelihood`` is left out.
        """
        delta = self.code_family == "delta"
        flat = self._points(data)
        iwae, elbo = self._bounds(flat, 1 if delta else iwae_samples)
        mse = float((self.reconstruct(flat).reshape(flat.shape) - flat).pow(2).mean())
        out = {"elbo": float(elbo.mean())}
        if not delta:
            out["log_likelihood"] = float(iwae.mean())
        return {**out, "reconstruction_mse": mse}

    def __repr__(self) -> str:
        return f"GenerativePosterior({self.model.name}, guide={self.code_family!r}, steps={len(self.loss)})"

    def predict(self, x):
        raise ZooError(f"{self.model.name} models x alone: use reconstruct(x), encode(x) or generate(n)")

    def to_arviz(self, data=None, num_samples: int = 100, iwae_samples: int = 1000):
        """An ``arviz.InferenceData``: the loss trace in ``sample_stats``; with ``data`` (choose a few
        points), also ``z`` draws from q(z | x) (chain, draw, obs, latent), replicated x from p(x | z),
        the observations, and per-point IWAE estimates of log p(x) as ``log_likelihood`` (one draw).
        """
        from .arviz import generative_inference_data

        return generative_inference_data(self, data, num_samples, iwae_samples)


def _log_density(trace: poutine.Trace) -> torch.Tensor:
    """Sum of the log densities of a trace's sample sites, left unsummed over plates."""
    return sum(site["fn"].log_prob(site["value"]) for site in trace.nodes.values()
               if site["type"] == "sample" and not isinstance(site["fn"], _Subsample))
