"""The ``zoo`` command: list, info, fit, demo. User errors print one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from ._errors import DiagnosticWarning, NonFiniteLossError, ZooError


def key_values(pairs, flag: str) -> dict:
    """``KEY=VALUE`` pairs with JSON values (``hidden=[50]``, ``lr=0.01``); a value that is not JSON is a string
    (``activation=tanh``), unless it opens a list, an object or a quoted string and does not close it."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ZooError(f"{flag}: expected KEY=VALUE, got {pair!r}")
        if key in out:
            raise ZooError(f"{flag}: {key} is given twice")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError as err:
            if value.lstrip()[:1] in ("[", "{", '"'):
                raise ZooError(f"{flag} {pair}: the value is not valid JSON ({err.msg} at character {err.pos}); "
                               "write lists as [50, 50] and quote strings inside them") from None
            out[key] = value
    return out


# what a run writes (and --overwrite may remove): the posterior's files, then any plots
RUN_FILES = ("zoo.json", "samples.pt", "params.pt", "built_from.pt", "posterior.nc", "idata.nc")


def output_folder(out: Path, overwrite: bool) -> Path:
    """``out`` checked before any work: a folder that can be written, not a file, and not an earlier run
    (or another non-empty folder) unless ``overwrite``, which removes the earlier run's files first."""
    if out.exists() and not out.is_dir():
        raise ZooError(f"--out {out} is a file; name a folder for the run")
    earlier = out.is_dir() and (out / "zoo.json").is_file()
    if out.is_dir() and any(out.iterdir()):
        if not earlier:
            raise ZooError(f"--out {out} is a folder that holds other files; name a new or empty folder")
        if not overwrite:
            raise ZooError(f"--out {out} holds an earlier run; pass --overwrite to replace it, or name another folder")
        for stale in [*(out / n for n in RUN_FILES), *out.glob("*.png")]:
            stale.unlink(missing_ok=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".zoo-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ZooError(f"--out {out} cannot be written ({err.strerror or err}); "
                       "name a folder you can write to") from None
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Bayesian deep learning model zoo on Pyro")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered models")
    info = sub.add_parser("info", help="a model's card")
    info.add_argument("model")
    fit = sub.add_parser("fit", help="fit a model to a dataset split and write its posterior")
    fit.add_argument("model")
    fit.add_argument("--data", required=True, help="dataset name (zoo.datasets.list_datasets())")
    fit.add_argument("--data-path", help="folder holding the dataset (else $ZOO_DATA, then shipped)")
    fit.add_argument("--split", type=int, default=None, help="split of a UCI set (default 0)")
    fit.add_argument("--backend", default="svi", help="svi, laplace or nuts")
    fit.add_argument("--out", default=None, help="output folder (default runs/MODEL-DATA-BACKEND)")
    fit.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    fit.add_argument("--progress", action="store_true", help="a progress bar even when stderr is not a terminal")
    fit.add_argument("--num-samples", type=int, default=None,
                     help="posterior draws (default 1000; 100 for CNNs and RNNs)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--device", default=None)
    fit.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="model config, e.g. hidden=[50]")
    fit.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="backend options, e.g. num_steps=500")
    active = sub.add_parser("active", help="active learning: label what the posterior is least sure of, refit")
    active.add_argument("model", help="a classifier, e.g. bayes-lenet")
    active.add_argument("--data", required=True, help="dataset whose training split is the pool")
    active.add_argument("--data-path", help="folder holding the dataset (else $ZOO_DATA, then shipped)")
    active.add_argument("--acquisition", nargs="+", default=["bald", "random"],
                        help="bald, max-entropy, variation-ratios, mean-std, random (several: one run each)")
    active.add_argument("--initial", type=int, default=20, help="labels to start from, balanced over classes")
    active.add_argument("--step", type=int, default=10, help="labels acquired per round")
    active.add_argument("--rounds", type=int, default=10)
    active.add_argument("--pool-size", type=int, default=None, help="a random subset of the training split")
    active.add_argument("--candidates", type=int, default=None, help="pool points scored per round (random)")
    active.add_argument("--test-size", type=int, default=None, help="the first N test points (default all)")
    active.add_argument("--backend", default="svi")
    active.add_argument("--seed", type=int, default=0)
    active.add_argument("--out", default=None, help="output folder (default runs/active-MODEL-DATA)")
    active.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    active.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="model config")
    active.add_argument("--option", nargs="*", metavar="KEY=VALUE", help="backend options, e.g. num_epochs=50")
    demo = sub.add_parser("demo", help="the main job: bnn with svi, laplace and nuts on a shipped UCI set")
    demo.add_argument("--data", default="yacht")
    demo.add_argument("--split", type=int, default=0)
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            from . import card, list_models

            for name in list_models():
                c = card(name)
                print(f"{name:22s} {c.task:15s} {c.family:14s} backends: {', '.join(c.backends)}")
        elif args.command == "info":
            from . import card

            print(card(args.model).describe())
        elif args.command == "fit":
            run_fit(args)
        elif args.command == "active":
            run_active(args)
        else:
            from .demo import run_demo

            run_demo(args.data, args.split, Path(args.out), quick=args.quick)
        return 0
    except ZooError as err:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank stops, rank 0 says why
            print(f"zoo: error: {' '.join(str(err).split())}", file=sys.stderr, flush=True)
        if torch.distributed.is_initialized():  # no rank leaves before rank 0 has said it (torchrun stops the
            torch.distributed.barrier()          # others when the first one exits)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    finally:
        # gloo torn down by the interpreter's exit can abort (SIGABRT) a rank whose peer has already gone
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def run_fit(args) -> None:
    import arviz as az
    import numpy as np

    from . import datasets, fit, load
    from .inference import distributed
    from .inference._base import make_backend
    from .inference.generative import GenerativePosterior
    from .metrics import classification, mutual_information, predictive_entropy
    from .plots import image_grid, predictive_plot, reliability_diagram, trace_plot

    world = distributed.join()  # under torchrun: rank 0 checks the folder, reports and writes
    config, options = key_values(args.set, "--set"), key_values(args.option, "--option")
    where = {"split": args.split} if args.split is not None else {}
    where.update({"path": args.data_path} if args.data_path else {})
    data = datasets.load(args.data, **where)
    label = f"{args.data}" + (f" split {args.split}" if args.split is not None else "")
    model = load(args.model, data=data, **config)
    if _needs_binary(model, data):
        print(f"zoo: binarising {args.data} (fixed, seeded) for the bernoulli likelihood", file=sys.stderr)
        data = datasets.load(args.data, **where, binarize=True)
    make_backend(args.backend, options)  # bad backend options fail here, before any output
    out = Path(args.out or f"runs/{args.model}-{args.data}-{args.backend}")
    leader = world is None or world.leader
    refusal = None
    try:
        if leader:
            output_folder(out, args.overwrite)
    except ZooError as err:
        refusal = str(err)
    if world is not None:
        refusal = distributed.from_leader(refusal)  # every rank stops if rank 0 must, none waits for it
    if refusal:
        raise ZooError(refusal)
    if leader:
        print(f"zoo: fitting {args.model} to {label} with {args.backend}"
              + (f" on {world.size} processes" if world else "") + " (Ctrl-C stops and saves what is done)",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            post = fit(model, data.train, args.backend, num_samples=args.num_samples, seed=args.seed,
                       device=args.device, progress=True if args.progress else None, **options)
        except NonFiniteLossError as err:
            if err.posterior is None:
                raise
            if leader:
                err.posterior.save(out)
            raise ZooError(f"{err} Saved the last finite posterior to {out}/") from None
    wall = time.perf_counter() - start
    if not leader:
        return
    for w in caught:
        if not issubclass(w.category, DiagnosticWarning):  # the diagnosis below prints those
            print(f"zoo: warning: {w.message}", file=sys.stderr)
    if isinstance(post, GenerativePosterior):
        _report_generative(post, data, out, f"{args.model} on {label}", wall)
        return
    pred = post.predict(data.test.x)
    metrics = (post.evaluate(data.test) if pred.probs is None
               else {**classification(pred.probs, data.test.y),
                     "mutual_information": float(mutual_information(pred.draw_probs).mean())})
    post.save(out)
    idata = post.to_arviz(data.test)
    idata.to_netcdf(str(out / "idata.nc"))
    print(f"{args.model} on {label} with {args.backend}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f", wall {wall:.1f} s")
    print(post.diagnose())
    small = post.model.display.summary_sites
    if small is None:
        small = [k for k, (shape, _) in post.sites.latent.items() if math.prod(shape) == 1]
    if small:
        with np.errstate(divide="ignore", invalid="ignore"):  # a stuck chain: R-hat is inf, and says so
            print(az.summary(idata, var_names=small, kind="all" if post.num_chains > 1 else "stats"
                             ).to_string())
    title = f"{args.model} / {args.backend} on {args.data}"
    if pred.probs is None:
        predictive_plot(pred, data.test.y_original, out / "predictive.png", title=title)
    else:
        reliability_diagram(pred.probs, data.test.y, out / "reliability.png", title=title)
        if data.test.x.dim() == 4:  # images: the ones the model is least sure about
            entropy = predictive_entropy(pred.draw_probs)
            top = entropy.argsort(descending=True)[:16]
            titles = [f"{int(pred.mean[i])} (true {int(data.test.y[i])}, H={float(entropy[i]):.2f})" for i in top]
            image_grid(data.test.x[top], out / "most-uncertain.png", titles=titles, ncols=4)
    if args.backend in ("nuts", "chees", "pyro-nuts") and small:
        trace_plot(idata, small, out / "trace.png")
    if post.status.interrupted:
        print(f"zoo: interrupted; saved the work done so far to {out}", file=sys.stderr)
    print(f"wrote {out}/ (zoo.json, samples.pt, params.pt, posterior.nc, idata.nc, plots)")


def run_active(args) -> None:
    from . import active, datasets, load
    from ._data import Split
    from .inference._base import make_backend

    config, options = key_values(args.set, "--set"), key_values(args.option, "--option")
    data = datasets.load(args.data, **({"path": args.data_path} if args.data_path else {}))
    pool, test = data.train, data.test
    if args.pool_size is not None:
        keep = torch.randperm(len(pool), generator=torch.Generator().manual_seed(args.seed))[:args.pool_size]
        pool = Split(pool.x[keep], pool.y[keep])
    if args.test_size is not None:
        test = Split(test.x[:args.test_size], test.y[:args.test_size])
    model = load(args.model, data=data, **config)
    make_backend(args.backend, options)  # bad backend options fail here, before any output
    out = output_folder(Path(args.out or f"runs/active-{args.model}-{args.data}"), args.overwrite)
    runs = []
    for acquisition in args.acquisition:
        print(f"zoo: {acquisition}: {args.rounds} rounds of {args.step} labels from {args.initial}",
              file=sys.stderr, flush=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DiagnosticWarning)  # short fits on a few labels, by design
            runs.append(active.learn(model, pool, acquisition, initial=args.initial, step=args.step,
                                     rounds=args.rounds, test=test, candidates=args.candidates, seed=args.seed,
                                     backend=args.backend, **options))
    print("labels  " + "  ".join(f"{r.acquisition:>16s}" for r in runs) + "   (test error %)")
    for i, row in enumerate(runs[0].history):
        print(f"{row['labels']:6d}  " + "  ".join(f"{r.history[i]['error_pct']:16.2f}" for r in runs))
    (out / "history.json").write_text(json.dumps({r.acquisition: {"history": r.history, "acquired": r.acquired}
                                                  for r in runs}, indent=1))
    runs[0].plot(out / "learning-curves.png", others=runs[1:])
    print(f"wrote {out}/ (history.json, learning-curves.png)")


def _needs_binary(model, data) -> bool:
    """A bernoulli autoencoder given grey-level images (then loaded again, binarised)."""
    from .models.encoder_decoder import AutoencoderModel

    x = data.train.x
    return (isinstance(model, AutoencoderModel) and model.network.decoder.likelihood == "bernoulli"
            and not bool(((x == 0) | (x == 1)).all()))


def _report_generative(post, data, out: Path, label: str, wall: float, iwae_samples: int = 100) -> None:
    """An autoencoder's scores on the test split and its three PNGs: samples, reconstructions, codes."""
    from .plots import image_grid, latent_scatter

    scores = post.evaluate(data.test, iwae_samples=iwae_samples)
    post.save(out)
    post.to_arviz(data.test.x[:100], iwae_samples=iwae_samples).to_netcdf(str(out / "idata.nc"))
    names = {"elbo": "test ELBO", "log_likelihood": f"test log p(x) (IWAE, k={iwae_samples})",
             "reconstruction_mse": "reconstruction MSE"}
    print(f"{label}: " + ", ".join(f"{names[k]} {v:.4f}" for k, v in scores.items()) + f", wall {wall:.1f} s")
    x = data.test.x[:8]
    if x.dim() == 2:  # flattened square images back to (n, 1, side, side)
        side = int(x.shape[1] ** 0.5)
        x = x.reshape(-1, 1, side, side) if side * side == x.shape[1] else None
    if x is None:
        print("zoo: the data are not square images: no PNGs")
        return
    shape = x.shape
    image_grid(post.generate(32, seed=0).reshape(-1, *shape[1:]), out / "samples.png", ncols=8)
    rows, titles = [x], ["clean"] * 8
    corrupt = post.net.corruption
    if corrupt is not None:
        noisy = corrupt(post.net.flat(x)).reshape(shape)
        rows.append(noisy.clamp(0, 1))
        x, titles = noisy, titles + ["corrupted"] * 8
    rows.append(post.reconstruct(x.reshape(-1, *post.net.input_shape)).reshape(shape))
    titles += ["denoised" if corrupt is not None else "reconstructed"] * 8
    image_grid(torch.cat(rows), out / "reconstructions.png", titles=titles, ncols=8)
    codes = post.encode(data.test.x[:2000])
    latent_scatter(codes, data.test.y[:2000], out / "latent.png", title=f"{label}: codes of {len(codes):,} test points")
    print(f"wrote {out}/ (zoo.json, samples.pt, params.pt, posterior.nc, idata.nc, samples.png, "
          "reconstructions.png, latent.png)")
