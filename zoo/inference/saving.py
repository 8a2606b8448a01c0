"""A posterior as a folder: zoo.json (what rebuilds it), samples.pt and params.pt (plain tensors, read
with ``weights_only=True``), posterior.nc (ArviZ). Nothing is unpickled and no training data is needed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch

from .._errors import ZooError
from .sites import Sites

FORMAT = "zoo-posterior"
VERSION = 1


def save(post, path) -> Path:
    if post.model.name is None:
        raise ZooError("save: only registered models can be saved; register it with "
                       "@zoo.register_model so load_posterior can rebuild it")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT, "version": VERSION, "model": post.model.name, "config": post.model.config,
        "method": post.method, "options": _jsonable(post.options), "target_scale": post.target_scale,
        "sites": post.sites.to_json(), "loss": post.loss, "info": _jsonable(post.info), "timings": post.timings,
    }
    (path / "zoo.json").write_text(json.dumps(meta, indent=1))
    torch.save({"samples": _cpu(post.samples), "sample_stats": _cpu(post.sample_stats),
                "deterministic": _cpu(post.deterministic), "config": _config_key(meta["config"])},
               path / "samples.pt")
    torch.save(_cpu(post.params), path / "params.pt")
    built_from = post.model.rebuild_data()
    if built_from is not None:  # a model that conditions on its training data needs it back
        torch.save([a.detach().cpu() for a in built_from], path / "built_from.pt")
    post.to_arviz().to_netcdf(str(path / "posterior.nc"))
    return path


# what zoo.json must hold, and of which type
REQUIRED = {"model": str, "config": dict, "method": str, "sites": dict, "options": dict, "target_scale": list,
            "loss": list, "info": dict, "timings": dict}


def load(path, cls):
    from .. import _registry
    from .posterior import Posterior

    path = Path(path)
    meta_file = path / "zoo.json"
    if not meta_file.is_file():
        raise ZooError(f"load_posterior: {path} holds no zoo.json; is it a folder written by Posterior.save?")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ZooError(f"load_posterior: {meta_file} is not valid JSON ({err}); the save is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = meta if not isinstance(meta, dict) else {k: meta.get(k) for k in ("format", "version")}
        raise ZooError(f"load_posterior: {path} is not a zoo posterior of version {VERSION} (found {found})")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise ZooError(f"load_posterior: {meta_file} lacks {missing}; the save is corrupt")
    wrong = [f"{k} (a {t.__name__})" for k, t in REQUIRED.items() if not isinstance(meta[k], t)]
    scale = meta["target_scale"]
    if not wrong and not (len(scale) == 2 and all(isinstance(v, (int, float)) for v in scale)):
        wrong = ["target_scale (two numbers)"]
    if wrong or not all(isinstance(v, (int, float)) for v in meta["loss"]):
        raise ZooError(f"load_posterior: {meta_file} has a malformed {', '.join(wrong) or 'loss (numbers)'}; "
                       "the save is corrupt")
    stored, params = _tensors(path / "samples.pt"), _tensors(path / "params.pt")
    if not isinstance(stored, dict) or not isinstance(params, dict):
        raise ZooError(f"load_posterior: samples.pt and params.pt in {path} must each hold a dict of tensors; "
                       "the save is corrupt")
    saved_with = stored.get("config", _config_key(meta["config"]))
    if saved_with != _config_key(meta["config"]):
        raise ZooError(f"load_posterior: the config in {meta_file} ({meta['config']}) is not the one the draws "
                       f"were saved with ({saved_with}); restore it, or refit with the new config")
    try:
        sites = Sites.from_json(meta["sites"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ZooError(f"load_posterior: the sites in {meta_file} are malformed ({err!r}); "
                       "the save is corrupt") from None
    samples = stored.get("samples")
    if not isinstance(samples, dict) or set(samples) != set(sites.latent) or any(
            not isinstance(v, torch.Tensor) or tuple(v.shape[2:]) != sites.latent[k][0] for k, v in samples.items()):
        raise ZooError(f"load_posterior: the draws in {path / 'samples.pt'} do not match the latent sites in "
                       f"{meta_file}; the save is corrupt")
    built_from = path / "built_from.pt"
    data = {"data": tuple(_tensors(built_from))} if built_from.is_file() else {}
    model = _registry.load(meta["model"], **meta["config"], **data)
    if cls is Posterior:
        cls = model.posterior_class or Posterior
    return cls(model, samples, method=meta["method"], sites=sites,
               sample_stats=stored.get("sample_stats", {}), loss=meta["loss"], params=params, info=meta["info"],
               target_scale=meta["target_scale"], timings=meta["timings"], options=meta["options"],
               deterministic=stored.get("deterministic", {}))


def _tensors(file: Path):
    """The tensors saved in ``file``, read without unpickling anything."""
    if not file.is_file():
        raise ZooError(f"load_posterior: {file} is missing; the save is incomplete")
    try:
        return torch.load(file, weights_only=True)
    except pickle.UnpicklingError:
        raise ZooError(f"load_posterior: {file} holds objects other than tensors, and the zoo never unpickles "
                       "them (a file can run code when unpickled); re-save the posterior with Posterior.save") from None
    except Exception as err:
        raise ZooError(f"load_posterior: cannot read the tensors in {file} ({type(err).__name__}); "
                       "the save is corrupt or incomplete") from None


def _config_key(config) -> str:
    """The config as canonical JSON: what the draws were saved with, compared at load."""
    return json.dumps(_jsonable(config), sort_keys=True)


def _cpu(tensors: dict) -> dict:
    return {k: v.detach().cpu() for k, v in tensors.items()}


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
