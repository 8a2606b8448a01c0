"""Active learning on MNIST after Gal, Islam & Ghahramani (2017): test error against acquired labels.

    python benchmarks/active.py --acquisitions bald max-entropy random --seeds 0 1 2 --rounds 30
    python benchmarks/active.py --summary-only

bayes-lenet with the MC dropout guide, retrained from scratch each round on the labels so far (``--steps`` Adam
steps, minibatches of 32), starting from 20 labels balanced over the digits and acquiring 10 per round. The pool
is a random --pool of the training digits; each round scores a random --candidates of its unlabelled points with
--draws dropout masks; the test error is on the first --test test digits. Each finished run (one acquisition,
one seed) is appended to benchmarks/results/active-runs.jsonl; the table and plot are rebuilt from all runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

import _runs
import torch

import zoo
from zoo.plots import learning_curves

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "active-runs.jsonl"
TARGETS = (10.0, 5.0)  # % test error: the paper's table 1 gives the labels each acquisition needs to reach them


def run(acquisitions, seeds, rounds, steps, pool_size, candidates, draws, test_size, path):
    data = zoo.datasets.load("mnist", path=path)
    test = zoo.Split(data.test.x[:test_size], data.test.y[:test_size])
    for seed in seeds:
        keep = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:pool_size]
        pool = zoo.Split(data.train.x[keep], data.train.y[keep])
        for acquisition in acquisitions:
            model = zoo.load("bayes-lenet", data=data)
            start = time.perf_counter()
            result = zoo.active.learn(model, pool, acquisition, initial=20, step=10, rounds=rounds, test=test,
                                      candidates=candidates, seed=seed, guide="mc-dropout", num_steps=steps,
                                      batch_size=32, num_samples=draws)
            row = {"acquisition": acquisition, "seed": seed, "rounds": rounds, "steps": steps, "pool": pool_size,
                   "candidates": candidates, "draws": draws, "test": test_size, "history": result.history,
                   "seconds": time.perf_counter() - start,
                   "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
                   "torch": torch.__version__}
            _runs.append(RUNS, row)
            print(acquisition, seed, [(h["labels"], round(h["error_pct"], 2)) for h in result.history], flush=True)


def labels_to_reach(history, target):
    return next((h["labels"] for h in history if h["error_pct"] <= target), None)


def summarise():
    rows = _runs.read(RUNS)
    setting = rows[-1]
    rows = [r for r in rows if all(r[k] == setting[k] for k in ("rounds", "steps", "pool", "candidates", "draws"))]
    by_acquisition = defaultdict(dict)
    for row in rows:
        by_acquisition[row["acquisition"]][row["seed"]] = row  # the latest run of each seed
    curves, lines = {}, []
    labels = [h["labels"] for h in setting["history"]]
    marks = [n for n in (20, 50, 100, 150, 200, 250, 300, 400, 500, 1000) if n in labels]
    lines += ["# Active learning on MNIST", "",
              f"bayes-lenet, MC dropout guide, {setting['steps']} Adam steps (batch 32) from scratch each round; 20 "
              f"balanced labels, then 10 per round; pool {setting['pool']:,} training digits, {setting['candidates']:,}"
              f" candidates scored per round with {setting['draws']} dropout masks; test error (%) on the first "
              f"{setting['test']:,} test digits, mean over seeds. Gal, Islam & Ghahramani (2017), table 1: to reach "
              "10 % error BALD took 145 labels and random 255; to reach 5 %, 335 and 835. The labels each seed took "
              "to reach them here: – where it did not.", "",
              "| acquisition | seeds | " + " | ".join(f"{n} labels" for n in marks)
              + "".join(f" | labels to {t:g} %" for t in TARGETS) + " | s/run |",
              "|---" * (len(marks) + 3 + len(TARGETS)) + "|"]
    for acquisition, runs in sorted(by_acquisition.items()):
        histories = [r["history"] for r in runs.values()]
        mean = [statistics.mean(h[i]["error_pct"] for h in histories) for i in range(len(labels))]
        curves[acquisition] = (labels, mean)
        reached = [", ".join(str(labels_to_reach(h, t) or "–") for h in histories) for t in TARGETS]
        seconds = statistics.mean(r["seconds"] for r in runs.values())
        cells = [f"{mean[labels.index(n)]:.2f}" for n in marks] + reached
        lines.append(f"| {acquisition} | {len(runs)} | " + " | ".join(cells) + f" | {seconds:.0f} |")
    lines += ["", f"Hardware: {setting['hardware']}, torch {setting['torch']}.", ""]
    (RESULTS / "active.md").write_text("\n".join(lines))
    (RESULTS / "active.json").write_text(json.dumps(rows, indent=1))
    learning_curves(curves, RESULTS / "active.png")
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--acquisitions", nargs="+", default=["bald", "max-entropy", "random"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=500, help="Adam steps per round's fit")
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--candidates", type=int, default=2_000)
    parser.add_argument("--draws", type=int, default=20, help="dropout masks per prediction")
    parser.add_argument("--test", type=int, default=2_000)
    parser.add_argument("--path", default=None, help="folder with the MNIST IDX files (default: $ZOO_DATA/mnist)")
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        run(args.acquisitions, args.seeds, args.rounds, args.steps, args.pool, args.candidates, args.draws,
            args.test, args.path)
    summarise()


if __name__ == "__main__":
    main()
