"""SST-2 benchmark for bayes-lstm: dev accuracy, NLL, ECE and wall time per guide vs the deterministic twin.

    python benchmarks/sst2.py --max-train 20000 --epochs 3
    python benchmarks/sst2.py --epochs 5 --methods mc-dropout --model-option dropout=0.5
    python benchmarks/sst2.py --summary-only

Data: $ZOO_DATA/sst2 (or --path); GLUE train phrases for training, the 872 dev sentences for testing.
Every model is embedding 64 -> LSTM 64 -> linear, trained with Adam (lr 3e-3, minibatches of 64) for
the same number of epochs; --model-option KEY=VALUE (repeatable) changes that, passed to zoo.load
(embed_dim, hidden, prior_scale to both models, dropout to bayes-lstm only). Each run is appended to
benchmarks/results/sst2-runs.jsonl; the table keeps the latest run per training size, epochs, method
and options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import _runs
import torch

import zoo
from zoo import metrics

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "sst2-runs.jsonl"
METHODS = {"mc-dropout": ("bayes-lstm", "mc-dropout"), "mean-field": ("bayes-lstm", "mean-field"),
           "map": ("lstm", None)}


def run(methods, max_train, epochs, num_samples, path, seed, options):
    data = zoo.datasets.load("sst2", path=path, max_train=max_train, seed=seed)
    for method in methods:
        model_name, guide = METHODS[method]
        used = {k: v for k, v in options.items() if model_name == "bayes-lstm" or k != "dropout"}
        model = zoo.load(model_name, data=data, **used)
        start = time.perf_counter()
        post = zoo.fit(model, data.train, "svi", guide=guide, num_epochs=epochs, seed=seed, progress=False,
                       num_samples=None if guide is None else num_samples)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        pred = post.predict(data.test.x)
        row = {"method": method, "model": model_name, "train_size": len(data.train), "epochs": epochs,
               "options": used, "draws": post.num_draws, **metrics.classification(pred.probs, data.test.y),
               "mutual_information": float(metrics.mutual_information(pred.draw_probs).mean()),
               "fit_s": fit_s, "predict_s": time.perf_counter() - start,
               "cores": len(os.sched_getaffinity(0)),
               "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU", "torch": torch.__version__}
        print(json.dumps(row), flush=True)
        _runs.append(RUNS, row)


def _options(row):
    return tuple(sorted(row.get("options", {}).items()))


def summarise():
    latest = {(row["train_size"], row["epochs"], row["method"], _options(row)): row for row in _runs.read(RUNS)}
    cols = ["accuracy", "nll", "ece", "brier", "mutual_information", "draws", "fit_s", "predict_s"]
    lines = ["# bayes-lstm on SST-2 (dev set, 872 sentences)", "",
             "| method | model | training phrases | epochs | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 4) + "|"]
    for key, row in sorted(latest.items(), key=lambda kv: (-kv[0][0], -kv[0][1], kv[0][2], kv[0][3])):
        cells = [f"{row[c]:.4g}" for c in cols]
        method = row["method"] + "".join(f", {k} = {v}" for k, v in key[3])
        lines.append(f"| {method} | {row['model']} | {row['train_size']:,} | {row['epochs']} | "
                     + " | ".join(cells) + " |")
    first = next(iter(latest.values()))
    cores = {row.get("cores") for row in latest.values()}
    where = (f"each run pinned to {n} core{'s' * (n > 1)} (taskset)" if len(cores) == 1 and (n := cores.pop())
             else "some runs shared 2 cores with other jobs")
    lines += ["", f"Hardware: {first['hardware']}, torch {first['torch']}; wall seconds, {where}.", ""]
    (RESULTS / "sst2.md").write_text("\n".join(lines))
    (RESULTS / "sst2.json").write_text(json.dumps(list(latest.values()), indent=1))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--num-samples", type=int, default=50)
    parser.add_argument("--path", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a zoo.load option (embed_dim, hidden, prior_scale; dropout for bayes-lstm), repeatable")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    options = {}
    for item in args.model_option:
        key, sep, value = item.partition("=")
        if not sep or key not in {"embed_dim", "hidden", "prior_scale", "dropout"}:
            parser.error(f"--model-option {item!r}: give KEY=VALUE, KEY one of embed_dim, hidden, prior_scale, dropout")
        options[key] = json.loads(value)
    if not args.summary_only:
        run(args.methods, args.max_train, args.epochs, args.num_samples, args.path, args.seed, options)
    summarise()


if __name__ == "__main__":
    main()
