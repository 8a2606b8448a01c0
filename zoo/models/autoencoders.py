"""Sparse, denoising and contractive autoencoders as model/guide pairs (MAP codes by default)."""

from __future__ import annotations

import math

from .._errors import ZooError
from .._model import ZooModel
from .._registry import register_model
from .corruption import corruption as make_corruption
from .encoder_decoder import REFUSED, build_autoencoder

# sigma^2 = 1/2 makes -log N(x | f(h), sigma^2) the squared error plus a constant
SQUARED_ERROR_SIGMA = math.sqrt(0.5)


@register_model("sparse-ae", task="generative", family="autoencoder",
                likelihood="h ~ Laplace(0, 1/lam); x ~ Normal(decoder(h), 1/2) | Bernoulli | ContinuousBernoulli",
                default_guide="delta", guides=("delta", "laplace", "normal"), backends=("svi",), refused=REFUSED,
                paper="Ng 2011, Sparse autoencoder (CS294A notes); Lee et al. 2007, Efficient sparse coding",
                notes="With the delta guide (MAP codes) the loss is exactly sum ||x - f(h)||^2 + lam * ||h||_1 "
                      "plus a constant: the classic L1-regularised sparse autoencoder. laplace and normal "
                      "guides give a stochastic encoder.")
def sparse_ae(*, data=None, input_shape=(784,), latent_dim: int = 200, hidden=(500,), activation: str = "relu",
              lam: float = 1.0, likelihood: str = "gaussian", sigma: float | None = SQUARED_ERROR_SIGMA) -> ZooModel:
    """Sparse autoencoder: the code's Laplace(0, 1/lam) prior is the sparsity penalty lam * sum |h_i|."""
    if not lam > 0:
        raise ZooError(f"sparse-ae: lam (the L1 weight, the Laplace prior's rate) must be positive, got {lam}")
    config = dict(input_shape=list(input_shape), latent_dim=latent_dim, hidden=list(hidden), activation=activation,
                  lam=lam, likelihood=likelihood, sigma=sigma)
    return build_autoencoder("sparse-ae", data, input_shape=input_shape, latent_dim=latent_dim, hidden=hidden,
                           activation=activation, likelihood=likelihood, sigma=sigma, prior="laplace",
                           prior_scale=1.0 / lam, codes=("delta", "laplace", "normal"),
                           config=config)


@register_model("denoising-ae", task="generative", family="autoencoder",
                likelihood="h ~ N(0, I); x ~ Normal(decoder(h), 1/2) | Bernoulli | ContinuousBernoulli",
                default_guide="delta", guides=("delta", "normal"), backends=("svi",), refused=REFUSED,
                paper="Vincent et al. 2008 and 2010, Stacked Denoising Autoencoders",
                notes="While fitting, the encoder reads a corrupted x~ = C(x) (gaussian, masking or "
                      "salt-and-pepper noise, fresh each step) and the decoder must reproduce the clean x. "
                      "corruption='none' is the plain autoencoder of the same size.")
def denoising_ae(*, data=None, input_shape=(784,), latent_dim: int = 200, hidden=(500,), activation: str = "relu",
                 corruption: str = "masking", level: float = 0.25, likelihood: str = "gaussian",
                 sigma: float | None = SQUARED_ERROR_SIGMA) -> ZooModel:
    """Denoising autoencoder: encode C(x), reconstruct x; the code has a weak N(0, I) prior."""
    config = dict(input_shape=list(input_shape), latent_dim=latent_dim, hidden=list(hidden), activation=activation,
                  corruption=corruption, level=level, likelihood=likelihood, sigma=sigma)
    return build_autoencoder("denoising-ae", data, input_shape=input_shape, latent_dim=latent_dim, hidden=hidden,
                           activation=activation, likelihood=likelihood, sigma=sigma, prior="normal",
                           prior_scale=1.0, codes=("delta", "normal"), corruption=make_corruption(corruption, level),
                           config=config)


@register_model("contractive-ae", task="generative", family="autoencoder",
                likelihood="h ~ N(0, I); x ~ Normal(decoder(h), 1/2) | Bernoulli | ContinuousBernoulli; "
                           "fitting adds lam * ||dh/dx||_F^2",
                default_guide="delta", guides=("delta", "normal"), backends=("svi",), refused=REFUSED,
                paper="Rifai et al. 2011, Contractive Auto-Encoders: Explicit Invariance During Feature Extraction",
                notes="While fitting, each point's loss adds lam times the squared Frobenius norm of the "
                      "encoder's Jacobian at it (closed form for one hidden layer, Hutchinson's estimate for "
                      "deeper encoders); the penalty is not part of log p(x). lam=0 is the plain autoencoder.")
def contractive_ae(*, data=None, input_shape=(784,), latent_dim: int = 200, hidden=(500,),
                   activation: str = "sigmoid", lam: float = 0.1, likelihood: str = "gaussian",
                   sigma: float | None = SQUARED_ERROR_SIGMA) -> ZooModel:
    """Contractive autoencoder: a code that changes little as x moves (Rifai's sigmoid encoder by default)."""
    config = dict(input_shape=list(input_shape), latent_dim=latent_dim, hidden=list(hidden), activation=activation,
                  lam=lam, likelihood=likelihood, sigma=sigma)
    return build_autoencoder("contractive-ae", data, input_shape=input_shape, latent_dim=latent_dim, hidden=hidden,
                           activation=activation, likelihood=likelihood, sigma=sigma, prior="normal",
                           prior_scale=1.0, codes=("delta", "normal"), contraction=lam, config=config)
