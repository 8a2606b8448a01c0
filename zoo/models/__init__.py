"""Built-in model families; importing this module registers them."""

from . import bnn, cnn, rnn  # noqa: F401
