"""Does the data sit on the scale the priors assume? A small prior predictive check, run before a fit:
priors written for standardised data meet raw data (x or y in the millions) silently otherwise, and NUTS
then returns garbage with a collapsed step size, SVI a posterior that never left the prior."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro import poutine

from .sites import Sites, is_sample, on_points, without_targets

DRAWS = 10  # prior predictive draws
POINTS = 64  # points they are drawn at, when the model indexes its data
FACTOR = 100.0  # "wildly different": the typical observation this many times off the predicted one


def scale_warnings(model: Callable, args: tuple, sites: Sites) -> list[str]:
    """A warning for each continuous observed site whose typical size (median |y|) is more than ``FACTOR``
    times off what the prior predictive gives at the same points; nothing for models with flat priors."""
    n = args[0].shape[0] if isinstance(args[0], torch.Tensor) and args[0].dim() else 1
    points = torch.arange(min(n, POINTS), device=args[0].device) if sites.subsamplable else None
    run = on_points(model, points)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        try:
            observed = poutine.trace(run).get_trace(*args).nodes
            predicted = [poutine.trace(run).get_trace(*without_targets(args, sites)).nodes for _ in range(DRAWS)]
        except NotImplementedError:  # a flat prior (ImproperUniform) cannot be drawn from: no prior predictive
            return []
        except (TypeError, AttributeError, ValueError, RuntimeError):
            return []  # a model that cannot run without its observations (an autoencoder reads x): none either
    messages = []
    for name in sites.observed:
        site = observed.get(name)
        if site is None or not is_sample(site) or site["fn"].support.is_discrete:
            continue
        typical = _typical(site["value"])
        expected = _typical(torch.stack([p[name]["value"].reshape(site["value"].shape) for p in predicted]))
        if not (typical > 0 and expected > 0) or 1 / FACTOR <= typical / expected <= FACTOR:
            continue
        messages.append(f"the observations of {name!r} are typically {typical:.3g} in size but the prior predicts "
                        f"{expected:.3g}: the priors assume data on another scale. Standardise x and y "
                        "((v - mean) / sd; the zoo's UCI loader does), or set priors on the data's scale")
    return messages


def _typical(values: torch.Tensor) -> float:
    finite = values[torch.isfinite(values)].abs().float()
    return float(finite.median()) if finite.numel() else 0.0
