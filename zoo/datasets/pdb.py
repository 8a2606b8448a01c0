"""posteriordb reference posteriors: the data of ten Stan programs as the zoo's Pyro models take it.

Each posterior (a folder of ``posteriordb/``: ``model.stan``, ``data.json``, ``reference.json``)
loads as a :class:`Reference`: the model's positional arguments (Stan's ``transformed data``
included, observations last), the reference posterior mean and sd of every Stan parameter, the
Stan source and the raw data. The model of the same name is ``zoo.load("pdb-<folder>")``.

>>> ref = load_reference("kidiq-kidscore_momiq")
>>> [tuple(a.shape) for a in ref.args], ref.reference["sigma"][0] > 0
([(434,), (434,)], True)
>>> sorted(stan_draws({"beta": torch.zeros(3, 2), "sigma": torch.ones(3)}))
['beta[1]', 'beta[2]', 'sigma']
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._errors import unknown_name
from ._registry import register_dataset

ROOT = Path(__file__).parent / "posteriordb"


@dataclass
class Reference:
    """A posteriordb posterior: model arguments, reference ``stan name -> (mean, sd)``, Stan code, raw data."""

    name: str
    args: tuple
    reference: dict[str, tuple[float, float]]
    stan_code: str
    data: dict = field(repr=False)


def _f32(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=torch.float32)


def _kidscore_momiq(d):
    return _f32(d["mom_iq"]), _f32(d["kid_score"])


def _kidscore_interaction(d):
    mom_hs, mom_iq = _f32(d["mom_hs"]), _f32(d["mom_iq"])
    return mom_hs, mom_iq, mom_hs * mom_iq, _f32(d["kid_score"])


def _logearn_interaction(d):
    height, male = _f32(d["height"]), _f32(d["male"])
    return height, male, height * male, _f32(d["earn"]).log()


def _logmesquite(d):
    logs = [_f32(d[k]).log() for k in ("diam1", "diam2", "canopy_height", "total_height", "density")]
    return (*logs, _f32(d["group"]), _f32(d["weight"]).log())


def _blr(d):
    return _f32(d["X"]), _f32(d["y"])


def _gauss_mix(d):
    return (_f32(d["y"]),)


def _ark(d):
    """Lags ``X[t - K, k] = y[t - k - 1]`` for t = K..T-1 (0-based), and the observations ``y[K:]``."""
    y, k = _f32(d["y"]), int(d["K"])
    lags = torch.stack([y[k - j - 1: len(y) - j - 1] for j in range(k)], dim=-1)
    return lags, y[k:]


def _gp_regr(d):
    return _f32(d["x"]), _f32(d["y"])


def _garch11(d):
    """The previous returns ``y_prev[t] = y[t - 1]`` (one row per return; ``y_prev[0] = 0`` is unused, the first
    volatility being ``sigma1``), ``sigma1`` (a scalar), and the returns ``y``."""
    y = _f32(d["y"])
    return torch.cat([torch.zeros(1), y[:-1]]), _f32(d["sigma1"]), y


def _nes(d):
    age = torch.as_tensor(d["age_discrete"])
    cols = [_f32(d["real_ideo"]), _f32(d["race_adj"])]
    cols += [(age == level).to(torch.float32) for level in (2, 3, 4)]
    cols += [_f32(d[k]) for k in ("educ1", "gender", "income")]
    return (*cols, _f32(d["partyid7"]))


ARGS = {
    "kidiq-kidscore_momiq": _kidscore_momiq,
    "kidiq-kidscore_interaction": _kidscore_interaction,
    "earnings-logearn_interaction": _logearn_interaction,
    "mesquite-logmesquite": _logmesquite,
    "sblrc-blr": _blr,
    "low_dim_gauss_mix-low_dim_gauss_mix": _gauss_mix,
    "arK-arK": _ark,
    "gp_pois_regr-gp_regr": _gp_regr,
    "garch-garch11": _garch11,
    "nes1976-nes": _nes,
}


def names() -> list[str]:
    """The ten posteriordb folders shipped with the zoo."""
    return sorted(ARGS)


def load_reference(name: str) -> Reference:
    """Load posterior ``name`` (a folder name such as ``"kidiq-kidscore_momiq"``)."""
    if name not in ARGS:
        raise unknown_name("posteriordb posterior", name, ARGS)
    folder = ROOT / name
    data = json.loads((folder / "data.json").read_text())
    params = json.loads((folder / "reference.json").read_text())["parameters"]
    reference = {k: (float(v["mean"]), float(v["sd"])) for k, v in params.items()}
    return Reference(name, tuple(ARGS[name](data)), reference, (folder / "model.stan").read_text(), data)


def stan_draws(samples: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map draws ``site -> (draws, *shape)`` to Stan's names: ``beta[1]``, ..., ``L[1,2]``; scalars keep theirs."""
    out = {}
    for site, value in samples.items():
        value = torch.as_tensor(value)
        shape = value.shape[1:]
        if not shape:
            out[site] = value
            continue
        for index in itertools.product(*(range(n) for n in shape)):
            out[f"{site}[{','.join(str(i + 1) for i in index)}]"] = value[(slice(None), *index)]
    return out


def agreement(post, ref: Reference) -> dict[str, float]:
    """How a posterior's draws (latent and deterministic sites) agree with the reference: the worst
    |mean - reference mean| / reference sd and |sd - reference sd| / reference sd over the parameters."""
    flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in {**post.samples, **post.deterministic}.items()}
    draws = stan_draws(flat)
    missing = sorted(set(ref.reference) - set(draws))
    if missing:
        raise ValueError(f"the posterior has no draws of {missing}")
    mean = {k: abs(float(draws[k].mean()) - m) / sd for k, (m, sd) in ref.reference.items()}
    spread = {k: abs(float(draws[k].std()) - sd) / sd for k, (m, sd) in ref.reference.items()}
    return {"worst_mean": max(mean.values()), "worst_mean_param": max(mean, key=mean.get),
            "worst_sd": max(spread.values()), "worst_sd_param": max(spread, key=spread.get),
            "mean_error": mean, "sd_error": spread}


for _name in ARGS:
    register_dataset(f"pdb-{_name}")(functools.partial(load_reference, _name))
