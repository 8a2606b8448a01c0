"""Built-in model families; importing this module registers them."""

from . import bnn  # noqa: F401
