"""MNIST benchmark for bayes-lenet: test error, NLL, ECE, OOD AUROC and wall time per method.

    python benchmarks/mnist.py --fractions 1 0.25 0.03125 --methods mc-dropout weight-scaling mean-field map
    python benchmarks/mnist.py --summary-only

Data: $ZOO_DATA/mnist (or --path). Every method trains LeNet-5 in Caffe sizes (20-50-500) with
Adam on minibatches of 128 for the same number of epochs; ``weight-scaling`` is the MC dropout
fit predicting with its mean weights (standard dropout), ``map`` the deterministic twin ``lenet``.
The ``laplace-*-glm`` methods are post-hoc: a Gaussian at the ``map`` fit of the same run (so at the same
accuracy), with the linearised predictive; their fit_s is the Laplace step alone.
With --validation F a random fraction F of the training digits is held out before anything trains (every
method then trains on the rest), and the post-hoc methods choose the prior precision by the held-out
digits' log predictive density (tune_prior="validation").
OOD sets: the first --ood test digits rotated by 90 degrees, and uniform-noise images. Each run is
appended to benchmarks/results/mnist-runs.jsonl; the summary table is rebuilt from all runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections import defaultdict
from pathlib import Path

import _runs
import torch

import zoo
from zoo import metrics
from zoo._data import Split
from zoo.inference.posterior import Posterior
from zoo.inference.validation import holdout

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "mnist-runs.jsonl"
# Gal & Ghahramani (2015), figure 2 (read off the plot): lenet-all test error after 10^6 iterations
PUBLISHED = {"mc-dropout": 0.5, "weight-scaling": 0.6, "map": 1.0}

# name -> (model, backend, backend options)
METHODS = {
    "mc-dropout": ("bayes-lenet", "svi", dict(guide="mc-dropout")),
    "mean-field": ("bayes-lenet", "svi", dict(guide="mean-field")),
    "map": ("lenet", "svi", dict()),
    "laplace-last-layer": ("lenet", "laplace", dict(subset="last-layer", hessian="full")),
    "laplace-diag": ("lenet", "laplace", dict(subset="all", hessian="diag")),
    # post-hoc on the `map` fit of the same run (at="map"): the same network, so the same accuracy
    "laplace-kron-glm": ("lenet", "laplace", dict(subset="all", hessian="kron", predictive="glm", at="map")),
    "laplace-last-layer-glm": ("lenet", "laplace", dict(subset="last-layer", hessian="full", predictive="glm",
                                                        at="map")),
}


def weight_scaled(post: Posterior) -> Posterior:
    """Standard dropout: the MC dropout fit with each weight at its mean under q (M, no masks)."""
    samples = {name: post.params[f"mc_dropout.{name}"][None, None] for name in post.sites.latent}
    return Posterior(post.model, samples, method="svi", sites=post.sites)


def ood_sets(test, n):
    x = test.x[:n]
    return {"rotated": x.rot90(1, (-2, -1)), "noise": torch.rand(x.shape, generator=torch.Generator().manual_seed(0))}


def score(post, data, ood, n_ood):
    start = time.perf_counter()
    pred = post.predict(data.test.x)
    row = metrics.classification(pred.probs, data.test.y)
    row = {"error_pct": 100 * (1 - row.pop("accuracy")), **row}
    inside = pred.draw_probs[:, :n_ood]
    for name, x in ood.items():
        outside = post.predict(x).draw_probs
        row[f"auroc_{name}_entropy"] = metrics.ood_auroc(inside, outside, "entropy")
        if inside.shape[0] > 1:
            row[f"auroc_{name}_mi"] = metrics.ood_auroc(inside, outside, "mutual_information")
    row["predict_s"] = time.perf_counter() - start
    return row


def run(fractions, methods, epochs, num_samples, n_ood, path, seed, validation, lr_decay):
    for fraction in fractions:
        data = zoo.datasets.load("mnist", path=path, fraction=fraction, seed=seed)
        held = None
        if validation:
            kept, held = holdout(data.train.args, validation, seed)
            data = dataclasses.replace(data, train=Split(*kept))
        ood = ood_sets(data.test, n_ood)
        # the same number of optimiser steps on every fraction, at least `epochs` passes
        n_epochs = max(epochs, round(epochs / fraction ** 0.5))
        fitted_map = None
        posthoc = any(METHODS.get(m, ("", "", {}))[2].get("at") == "map" for m in methods)
        # the map first: the post-hoc methods start from it
        order = ["map"] * ("map" in methods or posthoc) + [m for m in methods if m not in ("weight-scaling", "map")]
        for method in order:
            model_name, backend, options = METHODS[method]
            model = zoo.load(model_name, data=data)
            if options.get("at") == "map":  # post-hoc: the MAP is the `map` fit's, only the Gaussian is new
                options = {**options, "at": fitted_map}
                if held is not None:
                    options.update(tune_prior="validation", validation=held)
            elif backend == "svi":
                options = {**options, "num_epochs": n_epochs, **({"lr_decay": lr_decay} if lr_decay else {})}
            else:  # the MAP gets the same number of passes, in minibatches of 256
                options = {**options, "num_steps": n_epochs * -(-len(data.train) // 256), "lr": 1e-3}
            start = time.perf_counter()
            post = zoo.fit(model, data.train, backend, num_samples=None if model_name == "lenet" and
                           backend == "svi" else num_samples, seed=seed, progress=False, **options)
            fit_s = time.perf_counter() - start
            if method == "map":
                fitted_map = post
                if method not in methods:
                    continue
            scored = [(method, post)]
            if method == "mc-dropout" and "weight-scaling" in methods:
                scored.append(("weight-scaling", weight_scaled(post)))
            for name, fitted in scored:
                row = {"method": name, "fraction": fraction, "train_size": len(data.train), "epochs": n_epochs,
                       "validation": validation, "lr_decay": lr_decay or 1.0,
                       "draws": fitted.num_draws, "fit_s": fit_s, **score(fitted, data, ood, n_ood),
                       "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
                       "torch": torch.__version__}
                print(json.dumps(row), flush=True)
                _runs.append(RUNS, row)


def summarise():
    latest = {(row["fraction"], row["epochs"], row.get("validation") or 0.0, row.get("lr_decay", 1.0), row["method"]):
              row for row in _runs.read(RUNS)}
    groups = defaultdict(list)
    for key, row in sorted(latest.items(), key=lambda kv: (-kv[0][0], *kv[0][1:])):
        groups[key[:4]].append(row)
    cols = ["error_pct", "nll", "ece", "brier", "auroc_rotated_entropy", "auroc_rotated_mi",
            "auroc_noise_entropy", "auroc_noise_mi", "draws", "fit_s", "predict_s"]
    lines = ["# bayes-lenet on MNIST", "",
             "Test error (%), NLL, ECE (10 bins), Brier on the 10,000 test digits; OOD AUROC of predictive "
             "entropy and of mutual information (in: the first 2,000 test digits, out: the same digits rotated "
             "90 degrees, or 2,000 uniform-noise images). Published: Gal & Ghahramani 2015 fig. 2, lenet-all "
             "after 10^6 iterations (about 0.5 % MC dropout, 0.6 % weight scaling, 1 % without dropout). "
             "fit_s and predict_s are wall seconds; the runs shared the 2 cores with other jobs.", ""]
    for (fraction, epochs, validation, lr_decay), group in groups.items():
        first = group[0]
        held = f" after holding out {validation:g} of the split for the post-hoc prior" if validation else ""
        decay = f", the svi fits' learning rate decayed to {lr_decay:g} of itself" if lr_decay != 1 else ""
        lines += [f"## fraction {fraction:g} ({first['train_size']:,} training images{held}, {epochs} epochs{decay})",
                  "",
                  "| method | published error % | " + " | ".join(cols) + " |",
                  "|---" * (len(cols) + 2) + "|"]
        for row in group:
            ref = PUBLISHED.get(row["method"]) if fraction == 1 else None
            cells = [f"{row[c]:.4g}" if isinstance(row.get(c), (int, float)) else "–" for c in cols]
            lines.append(f"| {row['method']} | {ref if ref is not None else '–'} | " + " | ".join(cells) + " |")
        lines += ["", f"Hardware: {first['hardware']}, torch {first['torch']}.", ""]
    (RESULTS / "mnist.md").write_text("\n".join(lines))
    (RESULTS / "mnist.json").write_text(json.dumps(list(latest.values()), indent=1))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.25, 0.03125])
    parser.add_argument("--methods", nargs="+", default=["mc-dropout", "weight-scaling", "mean-field", "map"],
                        choices=[*METHODS, "weight-scaling"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=50)
    parser.add_argument("--ood", type=int, default=2000, help="test digits used for the OOD comparison")
    parser.add_argument("--path", default=None, help="folder with the MNIST IDX files (default: $ZOO_DATA/mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", type=float, default=None,
                        help="fraction of the training digits held out to tune the post-hoc prior precision")
    parser.add_argument("--lr-decay", type=float, default=None,
                        help="the svi fits' learning rate falls to this fraction of itself over the fit (default: "
                             "the model's, constant for bayes-lenet)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        run(args.fractions, args.methods, args.epochs, args.num_samples, args.ood, args.path, args.seed,
            args.validation, args.lr_decay)
    summarise()


if __name__ == "__main__":
    main()
