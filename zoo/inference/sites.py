"""What a model's sites are, read from a real trace on the user's own data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample

from .._errors import ZooError
from .._initialization import feasible

DATA_PLATE = "data"
# a trace on this many points of plate "data" shows every global site when the model indexes its data
PROBE_POINTS = 2


class MinibatchIndices(Messenger):
    """Sets the indices of ``pyro.plate("data", N)`` so it sees a minibatch with scale N / B.

    The model takes the full data and indexes it with the plate's indices
    (``with pyro.plate("data", len(x)) as idx: ... x[idx]``), the idiom of Pyro's subsampling.
    """

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.indices = indices

    def _pyro_sample(self, msg):
        if msg["name"] == DATA_PLATE and isinstance(msg["fn"], _Subsample):
            msg["value"] = self.indices


def is_sample(site) -> bool:
    return site["type"] == "sample" and not isinstance(site["fn"], _Subsample)


def is_deterministic(site) -> bool:
    return bool(site["infer"].get("_deterministic"))


@dataclass
class Sites:
    """A model's sites as a real trace on its data shows them.

    ``latent``: global latents, name -> (shape, event_dim). ``observed``: the observed sites that the
    trailing ``num_targets`` arguments feed, in the order they appear (one argument may feed several).
    ``local``: per-point latents inside plate "data" that the model's own guides draw (name -> event
    shape). ``deterministic``: global ``pyro.deterministic`` sites (name -> shape), shown beside the
    latents. ``max_plate_nesting``: the batch dims the model uses, so draws go to the left of them.
    ``subsamplable``: the model indexes its data with the indices of plate "data". ``unplated``: observed
    sites outside every plate whose value is one event (``.to_event(1)``, a multivariate law), so their points
    cannot be told apart: fitting works, per-point prediction and log-likelihoods do not.
    """

    latent: dict[str, tuple[tuple[int, ...], int]]
    observed: list[str]
    local: dict[str, tuple[int, ...]] = field(default_factory=dict)
    deterministic: dict[str, tuple[int, ...]] = field(default_factory=dict)
    num_targets: int = 1
    max_plate_nesting: int = 1
    subsamplable: bool = False
    unplated: list[str] = field(default_factory=list)
    params: list[str] = field(default_factory=list)  # pyro.param sites the model reads (not saved: fit-time only)

    @classmethod
    def of(cls, model: Callable, args: tuple, *, init_loc_fn: Callable = init_to_median,
           allow_local: bool = False, max_plate_nesting: int = 1) -> Sites:
        with torch.random.fork_rng(devices=[]):  # probing leaves the user's random stream alone
            trace, subsamplable = probe_trace(model, args, init_loc_fn)
        latent, observed, local, deterministic, unplated = {}, [], {}, {}, []
        nesting = max_plate_nesting
        for name, site in trace.nodes.items():
            if not is_sample(site):
                continue
            frames = [f for f in site["cond_indep_stack"] if f.vectorized]
            nesting = max(nesting, len(site["fn"].batch_shape), *(-f.dim for f in frames))
            in_data = any(f.name == DATA_PLATE for f in frames)
            if is_deterministic(site):
                if not in_data:
                    deterministic[name] = tuple(site["value"].shape)
            elif site["is_observed"]:
                if not site["infer"].get("is_auxiliary"):  # pyro.factor terms are part of the density only
                    observed.append(name)
                    if not frames and site["fn"].event_dim > 0:
                        unplated.append(name)
            elif not in_data:
                latent[name] = (tuple(site["value"].shape), site["fn"].event_dim)
            elif allow_local:
                local[name] = tuple(site["fn"].event_shape)
            else:
                raise ZooError(f"site {name!r} is a local latent inside plate 'data'; the backends keep "
                               "global latents only, unless the model's own guides draw it "
                               "(ZooModel(local_latents=True)) and it is fitted with svi. Move it out of "
                               "plate 'data', or name that plate otherwise if it is a global parameter")
        if not observed:
            raise ZooError("the model has no observed site: pass the observations as its last "
                           "argument and use pyro.sample(..., obs=y)")
        with torch.random.fork_rng(devices=[]):
            targets, num_targets = _targets(model, args, init_loc_fn, observed, subsamplable, set(latent))
        params = [name for name, site in trace.nodes.items() if site["type"] == "param"]
        return cls(latent, targets, local, deterministic, num_targets, nesting, subsamplable,
                   [n for n in unplated if n in targets], params)

    def to_json(self) -> dict:
        return {"latent": {k: [list(s), e] for k, (s, e) in self.latent.items()}, "observed": self.observed,
                "local": {k: list(s) for k, s in self.local.items()},
                "deterministic": {k: list(s) for k, s in self.deterministic.items()},
                "num_targets": self.num_targets,
                "max_plate_nesting": self.max_plate_nesting, "subsamplable": self.subsamplable,
                "unplated": self.unplated}

    @classmethod
    def from_json(cls, meta: dict) -> Sites:
        return cls({k: (tuple(s), e) for k, (s, e) in meta["latent"].items()}, meta["observed"],
                   {k: tuple(s) for k, s in meta.get("local", {}).items()},
                   {k: tuple(s) for k, s in meta.get("deterministic", {}).items()}, meta.get("num_targets", 1),
                   meta.get("max_plate_nesting", 1), meta.get("subsamplable", False), meta.get("unplated", []))


def on_points(fn: Callable, indices: torch.Tensor | None) -> Callable:
    """``fn`` run on the points ``indices`` of plate "data" (all of them when None)."""
    if indices is None:
        return fn

    def run(*args):
        with MinibatchIndices(indices):
            return fn(*args)

    return run


def without_targets(args: tuple, sites: Sites) -> tuple:
    """``args`` with the observations (the trailing ``sites.num_targets`` arguments) set to None."""
    return (*args[:len(args) - sites.num_targets], *([None] * sites.num_targets))


def run_trace(model: Callable, args: tuple, init_loc_fn: Callable | None = None,
              indices: torch.Tensor | None = None, only=None) -> poutine.Trace:
    """One trace of ``model(*args)`` without gradients: latents from ``init_loc_fn`` (flat priors
    made feasible; with ``only``, for those sites alone), on the points ``indices`` of plate "data"."""
    run = model if init_loc_fn is None else InitMessenger(feasible(init_loc_fn, only))(model)
    with torch.no_grad():
        return poutine.trace(on_points(run, indices)).get_trace(*args)


def probe_trace(model: Callable, args: tuple, init_loc_fn: Callable) -> tuple[poutine.Trace, bool]:
    """A trace that shows every site at its true shape: on two points of plate "data" when the model
    indexes its data with the plate's indices (cheap for big data), else on all of it. Every other
    plate sees its real size."""
    rows = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 0
    if rows > PROBE_POINTS:
        indices = torch.arange(PROBE_POINTS, device=args[0].device)
        try:
            trace = run_trace(model, args, init_loc_fn, indices)
        except (ValueError, RuntimeError, IndexError):
            trace = None
        if trace is not None and _data_plate_size(trace) == {PROBE_POINTS}:
            return trace, True
    try:
        return run_trace(model, args, init_loc_fn), False
    except ZooError:
        raise
    except Exception as err:
        raise ZooError(f"the model fails when run on the data it was given: {type(err).__name__}: {err}. "
                       "Data go to the model as its positional arguments, observations last") from err


def _data_plate_size(trace) -> set | None:
    """The sizes that observed sites' log-densities have on plate "data" (empty without such a plate;
    None when an observation does not fit its distribution, e.g. a model that ignores the plate's indices)."""
    sizes = set()
    for site in trace.nodes.values():
        if not (is_sample(site) and site["is_observed"]) or is_deterministic(site):
            continue
        try:
            log_prob = site["fn"].log_prob(site["value"])
        except (ValueError, RuntimeError):
            return None
        sizes |= {log_prob.shape[f.dim] for f in site["cond_indep_stack"]
                  if f.name == DATA_PLATE and f.vectorized and log_prob.dim() >= -f.dim}
    return sizes


def _targets(model, args, init_loc_fn, observed, subsamplable, latent) -> tuple[list[str], int]:
    """The observed sites fed by the trailing arguments, and how many arguments those are: the sites
    that become latent when trailing arguments are replaced by None, one argument at a time."""
    indices = torch.arange(PROBE_POINTS, device=args[0].device) if subsamplable else None
    freed, k = set(), 0
    while k < len(args) and len(freed) < len(observed):
        trial = (*args[:len(args) - k - 1], *([None] * (k + 1)))
        try:
            trace = run_trace(model, trial, init_loc_fn, indices, only=latent)
        except Exception:  # the model needs this argument: it is an input, not an observation
            break
        now = {n for n in observed if n in trace.nodes and not trace.nodes[n]["is_observed"]}
        if not now - freed:
            break
        freed, k = now, k + 1
    if not freed:  # the observations are also inputs (an autoencoder's x): the convention, observations last
        return list(observed), 1
    return [n for n in observed if n in freed], k
