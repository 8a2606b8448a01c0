"""The model registry: a leaf module of plain dicts (builders and cards), no model imports."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from ._card import BACKENDS, ModelCard
from ._errors import ZooError, unknown_name

_BUILDERS: dict[str, Callable] = {}
_CARDS: dict[str, ModelCard] = {}


def register_model(
    name: str,
    *,
    task: str = "custom",
    family: str = "custom",
    likelihood: str = "",
    default_guide: str = "mean-field",
    guides: tuple[str, ...] = (),
    backends: tuple[str, ...] = BACKENDS,
    refused: dict[str, str] | None = None,
    paper: str = "",
    notes: str = "",
):
    """Register a builder under ``name``; the builder returns a Pyro model or a :class:`ZooModel`.

    Examples
    --------
    >>> import pyro, pyro.distributions as dist, zoo
    >>> @zoo.register_model("doc-coin", task="custom")
    ... def coin():
    ...     def model(y=None):
    ...         p = pyro.sample("p", dist.Beta(1.0, 1.0))
    ...         with pyro.plate("data", 10):
    ...             return pyro.sample("y", dist.Bernoulli(p), obs=y)
    ...     return model
    >>> "doc-coin" in zoo.list_models()
    True
    >>> zoo.unregister_model("doc-coin")
    """
    refused = dict(refused or {})
    card = ModelCard(
        name=name, family=family, task=task, likelihood=likelihood, default_guide=default_guide,
        guides=tuple(guides), backends=tuple(b for b in backends if b not in refused),
        refused=refused, paper=paper, notes=notes,
    )

    def decorator(builder: Callable) -> Callable:
        if name in _BUILDERS:
            raise ZooError(f"a model named {name!r} is already registered; choose another name")
        _BUILDERS[name] = builder
        _CARDS[name] = card
        return builder

    return decorator


def unregister_model(name: str) -> None:
    """Remove a registered model (mainly for tests and notebooks that re-run a cell)."""
    _BUILDERS.pop(name, None)
    _CARDS.pop(name, None)


def list_models(task: str | None = None) -> list[str]:
    """Names of every registered model, optionally only those of one task."""
    return sorted(n for n, c in _CARDS.items() if task is None or c.task == task)


def card(name: str) -> ModelCard:
    """The :class:`ModelCard` of a registered model."""
    if name not in _CARDS:
        raise unknown_name("model", name, _CARDS)
    return _CARDS[name]


def load(name: str, **config):
    """Build the registered model ``name`` with keyword ``config``; returns a :class:`ZooModel`.

    Examples
    --------
    >>> import zoo
    >>> model = zoo.load("bnn", in_features=3, hidden=[10])
    >>> model.card.task
    'regression'
    """
    from ._model import ZooModel

    if name not in _BUILDERS:
        raise unknown_name("model", name, _BUILDERS)
    builder = _BUILDERS[name]
    check_keywords(f"option of model {name!r}", builder, config)
    built = builder(**config)
    zm = built if isinstance(built, ZooModel) else ZooModel(built)
    zm.name = name
    zm.card = zm.card or _CARDS[name]  # a model may describe itself better than its registration (its task)
    if zm.config is None:
        zm.config = dict(config)
    return zm


def check_keywords(kind: str, fn: Callable, options: dict) -> None:
    """Every key of ``options`` a keyword ``fn`` accepts, else an error listing the ones it does."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [p for p, v in params.items() if v.kind in (v.KEYWORD_ONLY, v.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in accepted:
            raise unknown_name(kind, key, accepted, known_as="Its options" if accepted else "It takes none")
