"""Variational autoencoders: ``vae`` (Gaussian encoder) and ``vae-iaf`` (inverse autoregressive flows)."""

from __future__ import annotations

from .._model import ZooModel
from .._registry import register_model
from .encoder_decoder import REFUSED, build_autoencoder

LIKELIHOOD = "z ~ N(0, I); x ~ Bernoulli | ContinuousBernoulli | Normal (decoder(z))"


def _vae(name, data, input_shape, latent_dim, hidden, activation, likelihood, sigma, num_flows, flow_hidden,
         codes, decoder_hidden, dynamic_binarization) -> ZooModel:
    config = dict(input_shape=list(input_shape), latent_dim=latent_dim, hidden=list(hidden), activation=activation,
                  likelihood=likelihood, sigma=sigma)
    if dynamic_binarization:
        config["dynamic_binarization"] = True
    if decoder_hidden is not None:
        config["decoder_hidden"] = list(decoder_hidden)
    if num_flows:
        config.update(num_flows=num_flows, flow_hidden=flow_hidden)
    return build_autoencoder(name, data, input_shape=input_shape, latent_dim=latent_dim, hidden=hidden,
                           activation=activation, likelihood=likelihood, sigma=sigma, prior="normal",
                           prior_scale=1.0, codes=codes, num_flows=num_flows, flow_hidden=flow_hidden,
                           decoder_hidden=decoder_hidden, dynamic_binarization=dynamic_binarization,
                           config=config)


@register_model("vae", task="generative", family="autoencoder", likelihood=LIKELIHOOD, default_guide="normal",
                guides=("normal",), backends=("svi",), refused=REFUSED,
                paper="Kingma & Welling 2014, Auto-Encoding Variational Bayes; Burda et al. 2016, IWAE (evaluation)",
                notes="guide: amortised Gaussian encoder q(z|x) = N(mu(x), diag sigma(x)^2), reparameterised; "
                      "evaluate gives the ELBO and the importance-weighted estimate of log p(x).")
def vae(*, data=None, input_shape=(784,), latent_dim: int = 50, hidden=(200, 200), activation: str = "tanh",
        likelihood: str = "bernoulli", sigma: float | None = None, decoder_hidden=None,
        dynamic_binarization: bool = False) -> ZooModel:
    """VAE with MLP encoder and decoder (default: Burda et al.'s 784-200-200-50 tanh).

    ``decoder_hidden`` sets the decoder's hidden widths (default: ``hidden`` reversed); ``[]`` with a
    Gaussian likelihood is probabilistic PCA, x ~ N(W z + b, sigma^2 I). ``dynamic_binarization``: fit
    grey levels in [0, 1] with the Bernoulli likelihood, each step drawing fresh 0/1 pixels from them (Burda
    et al. 2016); evaluate on binary pixels.
    """
    return _vae("vae", data, input_shape, latent_dim, hidden, activation, likelihood, sigma, 0, 0, ("normal",),
                decoder_hidden, dynamic_binarization)


@register_model("vae-iaf", task="generative", family="autoencoder", likelihood=LIKELIHOOD, default_guide="iaf",
                guides=("iaf", "normal"), backends=("svi",), refused=REFUSED,
                paper="Kingma et al. 2016, Improved Variational Inference with Inverse Autoregressive Flow",
                notes="guide: the Gaussian encoder followed by num_flows affine autoregressive steps "
                      "(pyro.distributions.transforms, MADE networks conditioned on the encoder's last "
                      "hidden layer, order reversed between steps).")
def vae_iaf(*, data=None, input_shape=(784,), latent_dim: int = 50, hidden=(200, 200), activation: str = "tanh",
            likelihood: str = "bernoulli", sigma: float | None = None, num_flows: int = 2,
            flow_hidden: int = 100, decoder_hidden=None, dynamic_binarization: bool = False) -> ZooModel:
    """VAE whose guide adds inverse autoregressive flow steps on top of the Gaussian encoder (``decoder_hidden``
    and ``dynamic_binarization`` as in ``vae``)."""
    return _vae("vae-iaf", data, input_shape, latent_dim, hidden, activation, likelihood, sigma, num_flows,
                flow_hidden, ("iaf", "normal"), decoder_hidden, dynamic_binarization)
