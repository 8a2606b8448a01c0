"""Built-in model families; importing this module registers them."""

from . import autoencoders, bnn, cnn, glm, gp, gp_exact, posteriordb, rnn, vae  # noqa: F401
