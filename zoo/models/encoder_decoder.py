"""Autoencoders as Pyro model/guide pairs: a code prior p(z), a decoder likelihood p(x | z), and an
amortised encoder q(z | x) as the guide (Kingma & Welling 2014).

One class serves the whole family: the VAE (Gaussian codes, optionally pushed through inverse
autoregressive flows), the sparse AE (a Laplace prior, so -log p(z) is an L1 penalty; a Delta code
makes the loss exactly the classic L1-regularised autoencoder), the denoising AE (while fitting,
the encoder reads a corrupted input and the decoder must reproduce the clean one) and the contractive
AE (while fitting, the encoder's Jacobian is penalised). With dynamic binarisation (Burda et al. 2016) a
Bernoulli model fits grey levels: each step scores a fresh 0/1 draw of every pixel from its intensity.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.transforms import ConditionalAffineAutoregressive, Permute
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from .. import _noise as noise
from .._data import as_args, training_arrays
from .._errors import ZooError
from .._model import Defaults, ZooModel
from ..inference.generative import GenerativePosterior

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian")
PRIORS = ("normal", "laplace")
CODES = ("normal", "laplace", "delta", "iaf")
ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
# each activation's derivative at its pre-activation a, for the contractive penalty's closed form
ACTIVATION_SLOPES = {"relu": lambda a: (a > 0).to(a.dtype), "tanh": lambda a: 1 - torch.tanh(a) ** 2,
                     "sigmoid": lambda a: torch.sigmoid(a) * torch.sigmoid(-a),
                     "gelu": lambda a: torch.special.ndtr(a) + a * torch.exp(-a**2 / 2) / math.sqrt(2 * math.pi)}
# a constant rate, as plain PyTorch trains it: decayed to a tenth (svi's default), vae after 5 epochs of 10,000
# binarised digits (Adam 1e-3, batch 100, the same initial weights) reached a test ELBO of -208.6 and -207.1
# (two seeds) against -190.9 and -189.6 constant
AE_SVI_DEFAULTS = {"batch_size": 100, "lr": 1e-3, "lr_decay": 1.0, "num_epochs": 10, "elbo": "meanfield"}
REFUSED = {"laplace": "its latents are per-point codes inferred by an amortised encoder; use svi",
           "nuts": "its latents are per-point codes inferred by an amortised encoder; use svi"}


def mlp(sizes, activation: str, last_activation: bool = False) -> nn.Sequential:
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if last_activation or i < len(sizes) - 2:
            layers.append(ACTIVATION_MODULES[activation]())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x -> hidden h -> (loc, scale) of the code; ``num_flows`` IAF steps conditioned on h (Kingma et al. 2016)."""

    def __init__(self, in_features, hidden, latent_dim, activation, num_flows, flow_hidden):
        super().__init__()
        self.activation = activation
        self.trunk = mlp([in_features, *hidden], activation, last_activation=True)
        self.loc = nn.Linear(hidden[-1], latent_dim)
        self.scale = nn.Linear(hidden[-1], latent_dim)
        # a fixed variable order (Pyro's default is a random one, drawn at build time and not saved with the
        # weights), reversed between steps as in Kingma et al.
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(
                latent_dim, hidden[-1], [flow_hidden, flow_hidden], permutation=torch.arange(latent_dim)), stable=True)
            for _ in range(num_flows))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1))

    def q(self, x: torch.Tensor, code: str) -> dist.Distribution:
        """q(z | x) for points ``x`` (n, features), batch shape (n,), event (latent_dim,)."""
        h = self.trunk(x)
        loc = self.loc(h)
        if code == "delta":
            return dist.Delta(loc, event_dim=1)
        scale = F.softplus(self.scale(h)) + 1e-5
        if code == "laplace":
            return dist.Laplace(loc, scale).to_event(1)
        base = dist.Normal(loc, scale).to_event(1)
        if code == "normal":
            return base
        if not self.flows:
            raise ZooError("guide 'iaf' needs flows: build the model with num_flows >= 1 (vae-iaf does)")
        steps = []
        for i, flow in enumerate(self.flows):
            steps += [flow.condition(h)] + ([Permute(self.reverse)] if i < len(self.flows) - 1 else [])
        return dist.TransformedDistribution(base, steps)

    def contraction(self, x: torch.Tensor) -> torch.Tensor:
        """||d loc(x) / dx||_F^2 per row of ``x``, the contractive penalty of Rifai et al. (2011).

        With one hidden layer, J = W2 diag(s) W1 (s the activation's slopes), so ||J||_F^2 =
        s^T ((W1 W1^T) * (W2^T W2)) s exactly, with no per-example Jacobian. Deeper trunks get
        Hutchinson's unbiased estimate ||J^T u||^2, u ~ N(0, I), from one vector-Jacobian product.
        """
        layers = list(self.trunk)
        if len(layers) == 2:
            first, w2 = layers[0], self.loc.weight
            slopes = ACTIVATION_SLOPES[self.activation](first(x))
            gram = (first.weight @ first.weight.T) * (w2.T @ w2)
            return ((slopes @ gram) * slopes).sum(-1)
        x = x.detach().requires_grad_(True)
        code = self.loc(self.trunk(x))
        (vjp,) = torch.autograd.grad(code, x, torch.randn_like(code), create_graph=True)
        return vjp.pow(2).sum(-1)


class Decoder(nn.Module):
    """z -> the likelihood p(x | z) over flattened x; a Gaussian's sigma is fixed or learnt."""

    def __init__(self, latent_dim, hidden, out_features, activation, likelihood, sigma):
        super().__init__()
        self.net = mlp([latent_dim, *hidden, out_features], activation)
        self.likelihood = likelihood
        self.sigma = sigma
        learnt = likelihood == "gaussian" and sigma is None
        self.log_sigma = nn.Parameter(torch.zeros(())) if learnt else None

    def forward(self, z: torch.Tensor) -> dist.Distribution:
        out = self.net(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        if self.likelihood == "continuous-bernoulli":
            return dist.ContinuousBernoulli(logits=out.clamp(-30, 30)).to_event(1)
        sigma = self.log_sigma.exp() if self.log_sigma is not None else torch.tensor(self.sigma, device=z.device)
        return dist.Normal(out, sigma.expand(out.shape)).to_event(1)


class AutoEncoder(nn.Module):
    """``model(x)``: z ~ prior, x ~ decoder(z); ``guide_for(code)(x)``: z ~ q(z | corrupt(x)).

    Every point has its own code ``z`` in plate ``"data"``, so minibatches subsample codes and data
    together. The networks' weights are point estimates (``pyro.module``), as in a standard VAE.
    """

    def check_inputs(self, name: str, args: tuple) -> torch.Tensor:
        """``args[0]`` checked against the input shape the networks were built for (any values)."""
        return check_inputs(name, args, self.input_shape)

    def __init__(self, input_shape, latent_dim, hidden, activation, likelihood, sigma, prior, prior_scale,
                 num_flows=0, flow_hidden=100, corruption: Callable | None = None, decoder_hidden=None,
                 contraction: float = 0.0, dynamic_binarization: bool = False):
        super().__init__()
        self.dynamic_binarization = dynamic_binarization
        self.contraction = contraction
        self.input_shape = tuple(input_shape)
        features = math.prod(self.input_shape)
        self.latent_dim = latent_dim
        self.prior_name, self.prior_scale = prior, prior_scale
        self.corruption = corruption
        self.encoder = Encoder(features, hidden, latent_dim, activation, num_flows, flow_hidden)
        decoder_hidden = list(reversed(hidden)) if decoder_hidden is None else list(decoder_hidden)
        self.decoder = Decoder(latent_dim, decoder_hidden, features, activation, likelihood, sigma)

    def prior(self, device) -> dist.Distribution:
        family = dist.Normal if self.prior_name == "normal" else dist.Laplace
        return family(torch.zeros(self.latent_dim, device=device), self.prior_scale).to_event(1)

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def observed(self, points: torch.Tensor) -> torch.Tensor:
        """The pixels the likelihood scores: with dynamic binarisation, while fitting, one Bernoulli draw from
        the grey levels per step, the same in the guide and the model."""
        if self.dynamic_binarization and noise.fitting():
            return noise.drawn_once("binarized", lambda: torch.bernoulli(points))
        return points

    def model(self, x: torch.Tensor) -> torch.Tensor:
        pyro.module("decoder", self.decoder)
        flat = self.flat(x)
        with pyro.plate("data", x.shape[0]) as idx:
            z = pyro.sample("z", self.prior(x.device))
            if self.contraction and noise.fitting():
                # a training penalty on the encoder, like the corruption: never part of log p(x)
                pyro.module("encoder", self.encoder)
                pyro.factor("contraction", -self.contraction * self.encoder.contraction(flat[idx]))
            return pyro.sample("x", self.decoder(z), obs=self.observed(flat[idx]))

    def guide_for(self, code: str) -> Callable:
        """The amortised guide with codes of family ``code`` (normal, laplace, delta or iaf)."""

        def guide(x: torch.Tensor) -> torch.Tensor:
            pyro.module("encoder", self.encoder)
            flat = self.flat(x)
            with pyro.plate("data", x.shape[0]) as idx:
                seen = self.observed(flat[idx])
                if self.corruption is not None and noise.fitting():
                    seen = self.corruption(seen)
                return pyro.sample("z", self.encoder.q(seen, code))

        guide.__name__ = f"{code}_encoder"
        return guide

    @torch.no_grad()
    def code(self, flat: torch.Tensor, code: str) -> torch.Tensor:
        """A point code per row: q's location, pushed through the flows for ``iaf``."""
        q = self.encoder.q(flat, code)
        if isinstance(q, dist.TransformedDistribution):
            z = q.base_dist.base_dist.loc
            for t in q.transforms:
                z = t(z)
            return z
        return q.mean


def check_inputs(name: str, args: tuple, input_shape) -> torch.Tensor:
    """The points ``x`` of ``args``, checked against the input shape the model was built for."""
    if len(args) != 1 or not isinstance(args[0], torch.Tensor):
        raise ZooError(f"{name}: expected the data x alone (a tensor of points), got {len(args)} arguments")
    x = args[0]
    if tuple(x.shape[1:]) != tuple(input_shape) and tuple(x.shape[1:]) != (math.prod(input_shape),):
        raise ZooError(f"{name}: x must have shape (points, {', '.join(map(str, input_shape))}) as the "
                       f"model was built for; got {tuple(x.shape)}. Build it with data= of this shape")
    if not x.is_floating_point():
        raise ZooError(f"{name}: x must be floating point, got {x.dtype}")
    return x


class AutoencoderModel(ZooModel):
    """An autoencoder: fitted to x alone, its per-point codes drawn by an amortised encoder; x is checked against
    the input shape and the likelihood's support, and a fit returns a :class:`GenerativePosterior`."""

    posterior_class = GenerativePosterior

    def __init__(self, name: str, network: AutoEncoder, **kwargs):
        super().__init__(network.model, modules={"encoder": network.encoder, "decoder": network.decoder},
                         local_latents=True, vectorized=True, **kwargs)
        self.label, self.network = name, network

    def arguments(self, data, device=None):
        return as_args(data, device=device, inputs_only=True)

    def validate(self, args, scored: bool = False):
        """``args`` checked for a fit, or with ``scored`` for the likelihood to score as they are (binary pixels
        for a model fitted to grey levels by dynamic binarisation)."""
        name, likelihood = self.label, self.network.decoder.likelihood
        x = check_inputs(name, args, self.network.input_shape)
        if likelihood == "gaussian" or not x.numel():
            return
        binary, dynamic = bool(((x == 0) | (x == 1)).all()), self.network.dynamic_binarization
        if scored and dynamic and not binary:
            raise ZooError(f"{name}: a model fitted with dynamic_binarization=True scores binary pixels only (0 "
                           "or 1); evaluate it on binarised data (zoo.datasets.load('mnist', binarize=True))")
        if x.min() < 0 or x.max() > 1:
            raise ZooError(f"{name}: the {likelihood} likelihood needs pixel values in [0, 1], got range "
                           f"[{float(x.min()):.3g}, {float(x.max()):.3g}]; divide 8-bit images by 255")
        if likelihood == "bernoulli" and not dynamic and not binary:
            raise ZooError(f"{name}: the bernoulli likelihood needs binary pixels (0 or 1), got grey levels; "
                           "load binarised data (zoo.datasets.load('mnist', binarize=True)), build the model "
                           "with dynamic_binarization=True to draw them afresh at every step, or with "
                           "likelihood='continuous-bernoulli' or 'gaussian'")


def build_autoencoder(name: str, data, *, input_shape, latent_dim: int, hidden, activation: str,
                      likelihood: str, sigma, prior: str, prior_scale: float, codes: tuple[str, ...],
                      num_flows: int = 0, flow_hidden: int = 100, corruption: Callable | None = None,
                      decoder_hidden=None, contraction: float = 0.0, dynamic_binarization: bool = False,
                      config: dict) -> ZooModel:
    """A checked :class:`AutoEncoder` wrapped as a :class:`ZooModel` with one guide per code family."""
    if data is not None:
        input_shape = tuple(training_arrays(data)[0].shape[1:])
    hidden = [int(h) for h in hidden]
    checks = [
        (likelihood in LIKELIHOODS, f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}"),
        (prior in PRIORS, f"prior must be one of {PRIORS}, got {prior!r}"),
        (activation in ACTIVATION_MODULES,
         f"activation must be one of {sorted(ACTIVATION_MODULES)}, got {activation!r}"),
        (len(input_shape) >= 1 and all(int(s) > 0 for s in input_shape),
         f"input_shape must be positive sizes, e.g. (784,) or (1, 28, 28); got {tuple(input_shape)}"),
        (isinstance(latent_dim, int) and latent_dim > 0, f"latent_dim must be a positive integer, got {latent_dim!r}"),
        (len(hidden) >= 1 and min(hidden) > 0, f"hidden must list at least one positive layer width, got {hidden}"),
        (prior_scale > 0, f"prior_scale must be positive, got {prior_scale}"),
        (sigma is None or sigma > 0, f"sigma must be positive or None (learnt), got {sigma}"),
        (num_flows >= 0, f"num_flows must be >= 0, got {num_flows}"),
        (contraction >= 0, f"lam (the contractive penalty's weight) must be >= 0, got {contraction}"),
        (not dynamic_binarization or likelihood == "bernoulli",
         f"dynamic_binarization draws binary pixels for the bernoulli likelihood, not {likelihood!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ZooError(f"{name}: {message}")
    ae = AutoEncoder(input_shape, latent_dim, hidden, activation, likelihood, sigma, prior, prior_scale,
                     num_flows, flow_hidden, corruption, decoder_hidden, contraction, dynamic_binarization)
    guides = {code: (lambda zm, code=code: ae.guide_for(code)) for code in codes}
    return AutoencoderModel(name, ae, guides=guides, config={**config, "input_shape": list(input_shape)},
                            defaults=Defaults(fit={"svi": dict(AE_SVI_DEFAULTS)}))
