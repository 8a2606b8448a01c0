"""Where latent sites start: any init strategy, made to work for flat priors too (a leaf module)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide.initialization import init_to_median

from ._errors import ZooError


def feasible(init_loc_fn: Callable = init_to_median, only=None) -> Callable:
    """``init_loc_fn`` that also starts sites which cannot be sampled (flat priors such as
    ``dist.ImproperUniform``) at the image of 0 under their support's bijection; with ``only``, sites
    outside it (observations set free) are drawn from their distribution."""

    def init(site):
        if only is not None and site["name"] not in only:
            return site["fn"].sample()
        try:
            return init_loc_fn(site)
        except NotImplementedError:
            fn = site["fn"]
            try:
                transform = biject_to(fn.support)
            except NotImplementedError:
                raise ZooError(f"site {site['name']!r} cannot be sampled and its support {fn.support} has no "
                               "bijection to start it from; give it a proper prior, or an init_loc_fn that "
                               "returns a value for it (zoo.ZooModel(model, init_loc_fn=...))") from None
            zero = torch.zeros(transform.inverse_shape(fn.batch_shape + fn.event_shape))
            return transform(zero.to(_device_of(fn))).detach()

    return init


def _device_of(fn):
    for value in vars(fn).values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
