"""A posterior as a folder: zoo.json (what rebuilds it), samples.pt and params.pt (plain tensors, read
with ``weights_only=True``), posterior.nc (ArviZ). Nothing is unpickled and no training data is needed."""

from __future__ import annotations

import json
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
                "deterministic": _cpu(post.deterministic)}, path / "samples.pt")
    torch.save(_cpu(post.params), path / "params.pt")
    if post.model.built_from is not None:  # a model that conditions on its training data needs it back
        torch.save([a.detach().cpu() for a in post.model.built_from], path / "built_from.pt")
    post.to_arviz().to_netcdf(str(path / "posterior.nc"))
    return path


def load(path, cls):
    from .. import _registry
    from .posterior import Posterior, posterior_class

    path = Path(path)
    meta_file = path / "zoo.json"
    if not meta_file.is_file():
        raise ZooError(f"load_posterior: {path} holds no zoo.json; is it a folder written by Posterior.save?")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise ZooError(f"load_posterior: {meta_file} is not valid JSON ({err}); the save is corrupt") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ZooError(f"load_posterior: {path} is not a zoo posterior of version {VERSION} "
                       f"(found format={meta.get('format')!r}, version={meta.get('version')!r})")
    try:
        stored = torch.load(path / "samples.pt", weights_only=True)
        params = torch.load(path / "params.pt", weights_only=True)
    except Exception as err:
        raise ZooError(f"load_posterior: cannot read the tensors in {path} ({err}); "
                       "the save is corrupt or incomplete") from None
    built_from = path / "built_from.pt"
    data = {"data": tuple(torch.load(built_from, weights_only=True))} if built_from.is_file() else {}
    model = _registry.load(meta["model"], **meta["config"], **data)
    if cls is Posterior:
        cls = posterior_class(model)
    return cls(model, stored["samples"], method=meta["method"], sites=Sites.from_json(meta["sites"]),
               sample_stats=stored["sample_stats"], loss=meta["loss"], params=params, info=meta["info"],
               target_scale=meta["target_scale"], timings=meta["timings"], options=meta["options"],
               deterministic=stored.get("deterministic", {}))


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
