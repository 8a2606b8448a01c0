"""Inference backends (svi, laplace, nuts, chees, pyro-nuts), the Posterior they return, and zoo.fit."""

from .._errors import DiagnosticWarning, ZooWarning
from ._base import BACKENDS, Backend, FitResult
from .chees import ChEES
from .fit import fit
from .laplace import Laplace
from .mcmc import PyroNUTS
from .nuts import NUTS
from .posterior import Posterior, Prediction
from .svi import SVI

__all__ = ["BACKENDS", "Backend", "ChEES", "DiagnosticWarning", "FitResult", "Laplace", "NUTS", "Posterior",
           "Prediction", "PyroNUTS", "SVI", "ZooWarning", "fit"]
