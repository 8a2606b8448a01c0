"""zoo.fit: one entry point over every backend."""

from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager

import pyro
import torch

from .._errors import DiagnosticWarning, NonFiniteLossError, ZooError, ZooWarning
from .._model import ZooModel
from . import distributed
from ._base import Problem, check_positive, make_backend
from .flat import decide_path, importance_log_ratios
from .posterior import Posterior
from .scale import scale_warnings
from .sites import Sites
from .validation import holdout


def _check_device(device) -> None:
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        kind = None
    if kind not in ("cpu", "cuda"):
        raise ZooError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:<index>'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"device={device!r} but torch sees no CUDA device; use device='cpu'")
    index = torch.device(device).index
    if kind == "cuda" and index is not None and index >= torch.cuda.device_count():
        raise ZooError(f"device={device!r} but torch sees {torch.cuda.device_count()} CUDA device(s)")


def _held_out(zm, validation, args, device, seed, engine) -> tuple[tuple, tuple | None]:
    """The arguments to fit and the held-out ones ``validation`` names (data, or a fraction of ``args``)."""
    if validation is None:
        return args, None
    if not getattr(engine, "takes_validation", False):
        raise ZooError(f"validation= is used by the laplace backend only, not by {engine.name!r}; leave it out")
    if isinstance(validation, (int, float)) and not isinstance(validation, bool):
        return holdout(args, float(validation), seed)
    held, _ = zm.arguments(validation, device)
    zm.validate(held)
    return args, held


@contextmanager
def _held(modules, hold: bool):
    """Laplace and the samplers fit latent sites only: the networks' weights are constants while they run."""
    weights = [p for m in modules for p in m.parameters() if p.requires_grad] if hold else []
    for p in weights:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in weights:
            p.requires_grad_(True)


def fit(model, data, backend="svi", *, num_samples: int | None = None, seed: int | None = None,
        device: str | None = None, progress: bool | None = None, validation=None, **options) -> Posterior:
    """Fit ``model`` to ``data`` with a backend; returns a :class:`Posterior`.

    Parameters
    ----------
    model : ZooModel or callable
        From ``zoo.load(name, ...)``, or a bare Pyro model ``model(*args)``.
    data : Split or tuple
        The model's positional arguments, observations last: a split is ``(x, y)``.
    backend : {"svi", "laplace", "nuts", "chees", "pyro-nuts"} or a backend object
        Swapping inference is changing this one word.
    num_samples : int, optional
        Posterior draws to keep (``nuts``: per chain); default 1,000, or the model's own default
        (100 for the CNN and RNN families, whose draws are whole networks).
    seed : int, optional
        Seeds Pyro, torch and numpy for a reproducible fit.
    device : str, optional
        ``"cuda"`` or ``"cpu"``; the data moves there and the model follows it.
    validation : Split, tuple or float, optional
        Held-out data in the form of ``data`` (same scaling), or a fraction of ``data``'s points to hold out
        (at random, by ``seed``); ``laplace`` uses it to stop its MAP early and with
        ``tune_prior="validation"`` to choose the prior precision by held-out log predictive density.
    **options
        Options of the backend, e.g. ``num_steps=2000, guide="mc-dropout"`` for svi.

    Examples
    --------
    >>> import zoo
    >>> data = zoo.datasets.load("yacht", split=0)
    >>> post = zoo.fit(zoo.load("bnn", data=data, hidden=[10]), data.train, num_steps=50, seed=0)
    >>> sorted(post.evaluate(data.test))
    ['rmse', 'test_ll']
    """
    zm = model if isinstance(model, ZooModel) else ZooModel(model)
    defaults = dict(zm.defaults.fit.get(backend if isinstance(backend, str) else "", {}))
    if {"num_steps", "num_epochs"} & set(options):  # the user's choice of length replaces the default's
        for length in ("num_steps", "num_epochs"):
            defaults.pop(length, None)
    options = {**defaults, **options}
    engine = make_backend(backend, options)
    refusal = zm.refusal(getattr(engine, "kind", engine.name))
    world = distributed.join()
    if world is not None and not refusal:
        refusal = distributed.refusal(engine.name, world)
    if refusal:
        name = zm.card.name if zm.card else zm.name
        raise ZooError(f"model {name!r} does not support backend {engine.name!r}: {refusal}")
    if num_samples is None:
        num_samples = zm.defaults.num_samples or 1000
    check_positive("num_samples", num_samples)
    _check_device(device)
    args, target_scale = zm.arguments(data, device)
    zm.validate(args)
    args, validation = _held_out(zm, validation, args, device, seed, engine)
    if seed is not None:
        pyro.set_rng_seed(seed)
    pyro.clear_param_store()
    zm.reset_modules()  # every fit trains its networks from the same start
    for module in zm.modules.values():  # the networks follow the data's device
        module.to(args[0].device)
    progress = (sys.stderr.isatty() if progress is None else progress) and (world is None or world.leader)
    sites = Sites.of(zm.model, args, init_loc_fn=zm.init_loc_fn, allow_local=zm.local_latents)
    for message in scale_warnings(zm.model, args, sites):
        warnings.warn(message, ZooWarning, stacklevel=2)
    held = [n for n in sites.params if n.split("$$$")[0] not in zm.modules]
    if held and not getattr(engine, "trains_modules", False):
        warnings.warn(f"{engine.name}: the model's pyro.param sites {held} stay at their initial values: {engine.name} "
                      "infers pyro.sample sites only. Give them a prior (pyro.sample) to infer them, or fit with svi, "
                      "which learns them", ZooWarning, stacklevel=2)
    problem = Problem(zm.model, args, sites, num_samples, progress, zm.init_loc_fn,
                      make_guide=zm.make_guide, last_layer=zm.last_layer, validation=validation, world=world)
    problem.path = path = "plate" if zm.vectorized else decide_path(problem)
    start = time.perf_counter()
    with _held(zm.modules.values(), not getattr(engine, "trains_modules", False)):
        result = engine.fit(problem)
    elapsed = time.perf_counter() - start
    info = {**result.info, "vectorized": path, "status": result.status.to_json()}
    if result.log_q is not None and result.samples:
        log_ratio = importance_log_ratios(problem, result.samples, result.log_q)
        if log_ratio is not None:
            result.sample_stats["log_ratio"] = log_ratio.reshape(1, -1)
    post = (zm.posterior_class or Posterior)(zm, result.samples, method=engine.name, sites=sites,
                               sample_stats=result.sample_stats, loss=result.loss,
                               params={**zm.fitted_state(), **result.params},
                               info=info, target_scale=target_scale, timings={"fit_s": elapsed},
                               options=options)
    post.compute_deterministic(args)
    for message in result.status.warnings:
        warnings.warn(message, ZooWarning, stacklevel=2)
    if result.status.stopped:
        raise NonFiniteLossError(result.status.stopped, posterior=post)
    for message in post.diagnose().warnings:
        warnings.warn(message, DiagnosticWarning, stacklevel=2)
    if result.status.interrupted:
        warnings.warn(result.status.interrupted + "; the posterior holds the work done so far",
                      ZooWarning, stacklevel=2)
    return post
