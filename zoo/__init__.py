"""zoo: a probabilistic-programming model zoo of Bayesian deep learning models on Pyro.

>>> import zoo
>>> "bnn" in zoo.list_models()
True
"""

from . import active, datasets, metrics, models  # noqa: F401  (models registers the built-in families)
from ._card import ModelCard
from ._data import Split
from ._errors import DiagnosticWarning, NonFiniteLossError, ZooError, ZooWarning
from ._model import ZooModel
from ._registry import card, list_models, load, register_model, unregister_model
from .inference import Posterior, fit
from .models.module import bayesian, register_module

load_posterior = Posterior.load

__all__ = ["DiagnosticWarning", "ModelCard", "NonFiniteLossError", "Posterior", "Split", "ZooError", "ZooModel",
           "ZooWarning", "active", "bayesian", "card", "datasets", "fit", "list_models", "load", "load_posterior",
           "metrics", "register_model", "register_module", "unregister_model"]
__version__ = "0.1.0"
