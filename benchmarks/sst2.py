"""SST-2 benchmark for bayes-lstm: dev accuracy, NLL, ECE and wall time per guide vs the deterministic twin.

    python benchmarks/sst2.py --max-train 20000 --epochs 3
    python benchmarks/sst2.py --summary-only

Data: $ZOO_DATA/sst2 (or --path); GLUE train phrases for training, the 872 dev sentences for testing.
Every model is embedding 64 -> LSTM 64 -> linear, trained with Adam (lr 3e-3, minibatches of 64) for
the same number of epochs. Each run is appended to benchmarks/results/sst2-runs.jsonl.
"""

from __future__ import annotations

import argparse
import json
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


def run(methods, max_train, epochs, num_samples, path, seed):
    data = zoo.datasets.load("sst2", path=path, max_train=max_train, seed=seed)
    for method in methods:
        model_name, guide = METHODS[method]
        model = zoo.load(model_name, data=data)
        start = time.perf_counter()
        post = zoo.fit(model, data.train, "svi", guide=guide, num_epochs=epochs, seed=seed, progress=False,
                       num_samples=None if guide is None else num_samples)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        pred = post.predict(data.test.x)
        row = {"method": method, "model": model_name, "train_size": len(data.train), "epochs": epochs,
               "draws": post.num_draws, **metrics.classification(pred.probs, data.test.y),
               "mutual_information": float(metrics.mutual_information(pred.draw_probs).mean()),
               "fit_s": fit_s, "predict_s": time.perf_counter() - start,
               "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU", "torch": torch.__version__}
        print(json.dumps(row), flush=True)
        _runs.append(RUNS, row)


def summarise():
    latest = {(row["train_size"], row["method"]): row for row in _runs.read(RUNS)}
    cols = ["accuracy", "nll", "ece", "brier", "mutual_information", "draws", "fit_s", "predict_s"]
    lines = ["# bayes-lstm on SST-2 (dev set, 872 sentences)", "",
             "| method | model | training phrases | epochs | " + " | ".join(cols) + " |",
             "|---" * (len(cols) + 4) + "|"]
    for (_, _), row in sorted(latest.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        cells = [f"{row[c]:.4g}" for c in cols]
        lines.append(f"| {row['method']} | {row['model']} | {row['train_size']:,} | {row['epochs']} | "
                     + " | ".join(cells) + " |")
    first = next(iter(latest.values()))
    lines += ["", f"Hardware: {first['hardware']}, torch {first['torch']}; wall seconds, the runs shared "
                  "the 2 cores with other jobs.", ""]
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
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        run(args.methods, args.max_train, args.epochs, args.num_samples, args.path, args.seed)
    summarise()


if __name__ == "__main__":
    main()
