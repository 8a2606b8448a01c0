"""ZooModel: a Pyro model and its guides travelling together, with the card that describes them."""

from __future__ import annotations

from collections.abc import Callable

import pyro.infer.autoguide as ag
from pyro.infer.autoguide.initialization import init_to_median

from ._errors import ZooError, unknown_name


def _autoguide(cls, **defaults):
    def factory(zm: ZooModel, **options):
        kwargs = {"init_loc_fn": zm.init_loc_fn, **defaults, **options}
        try:
            return cls(zm.model, **kwargs)
        except TypeError as err:
            raise ZooError(f"guide {cls.__name__}: bad option ({err})") from None

    return factory


# Guides any model gets: Pyro autoguides built from the model itself.
GENERIC_GUIDES: dict[str, Callable] = {
    "mean-field": _autoguide(ag.AutoNormal, init_scale=0.01),
    "low-rank": _autoguide(ag.AutoLowRankMultivariateNormal, init_scale=0.01, rank=10),
    "full-rank": _autoguide(ag.AutoMultivariateNormal, init_scale=0.01),
    "delta": _autoguide(ag.AutoDelta),
}


class ZooModel:
    """A Pyro model with its guides.

    Parameters
    ----------
    model : callable
        A Pyro model taking the data as positional arguments, observations last
        (``model(x, y=None)``). Observations sit in ``pyro.plate("data", ...)``.
    guide : callable, optional
        The default guide. Without one, the card's default guide (an autoguide) is used.
    guides : dict, optional
        Extra named guide factories ``factory(zoo_model, **options) -> guide``.
    config : dict, optional
        JSON-serialisable keyword config that rebuilds this model with ``zoo.load(name, **config)``.
    validate : callable, optional
        ``validate(args)`` raising :class:`zoo.ZooError` for data this model cannot take.
    fit_defaults : dict, optional
        Per-backend default options, e.g. ``{"svi": {"lr": 1e-2}}``.
    summary_sites : list of str, optional
        The non-weight latents worth a summary table and trace plot (default: the scalar ones).
    num_samples : int, optional
        Posterior draws ``zoo.fit`` keeps by default (1,000 unless a big network asks for fewer).
    refused : dict, optional
        Backends this instance cannot take, with the reason (e.g. NUTS on a large network).
    last_layer : list of str, optional
        The output layer's weight sites: Laplace's ``subset="last-layer"`` and ``to_arviz``'s default.
    predict_batch : int, optional
        Points per vectorised prediction pass for 100 draws (scaled to the number of draws), so
        that big networks predict in bounded memory; default all points at once.
    autoencoder : torch.nn.Module, optional
        For models with per-point codes inferred by an amortised encoder (VAEs, sparse and
        denoising AEs): the module holding encoder and decoder. Such a model is fitted to x alone
        and returns a :class:`~zoo.inference.generative.GenerativePosterior`.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable | None = None,
        *,
        guides: dict[str, Callable] | None = None,
        config: dict | None = None,
        validate: Callable | None = None,
        fit_defaults: dict[str, dict] | None = None,
        init_loc_fn: Callable = init_to_median,
        max_plate_nesting: int = 1,
        summary_sites: list[str] | None = None,
        num_samples: int | None = None,
        refused: dict[str, str] | None = None,
        last_layer: list[str] | None = None,
        predict_batch: int | None = None,
        autoencoder=None,
    ):
        if not callable(model):
            raise ZooError(f"model must be a callable Pyro model, got {type(model).__name__}")
        self.model = model
        self.guide = guide
        # autoguides over per-point codes are neither amortised nor minibatchable: not offered
        self.guides = {**({} if autoencoder is not None else GENERIC_GUIDES), **(guides or {})}
        self.config = config
        self.validate = validate or (lambda args: None)
        self.fit_defaults = fit_defaults or {}
        self.init_loc_fn = init_loc_fn
        self.max_plate_nesting = max_plate_nesting
        self.summary_sites = summary_sites
        self.num_samples = num_samples
        self.refused = refused or {}
        self.last_layer = last_layer
        self.predict_batch = predict_batch
        self.autoencoder = autoencoder
        self.name: str | None = None
        self.card = None

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def make_guide(self, guide: str | Callable | None = None, **options) -> Callable:
        """The guide called ``guide`` (default: the model's own, else the card's default)."""
        if callable(guide):
            return guide
        if guide is None:
            if self.guide is not None:
                return self.guide
            guide = self.card.default_guide if self.card else "mean-field"
        if guide not in self.guides:
            raise unknown_name("guide", guide, self.guides)
        return self.guides[guide](self, **options)

    def __repr__(self) -> str:
        return f"ZooModel({self.name or getattr(self.model, '__name__', 'model')}, config={self.config})"
