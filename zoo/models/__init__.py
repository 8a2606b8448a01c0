"""Built-in model families; importing this module registers them."""

from . import autoencoders, bnn, cnn, gp, gp_exact, rnn, vae  # noqa: F401
