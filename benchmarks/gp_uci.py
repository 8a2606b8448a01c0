"""UCI regression with sparse and deep GPs: svgp, dgp2, dgp3 beside Salimbeni & Deisenroth and the zoo's bnn.

    python benchmarks/gp_uci.py --datasets yacht energy --methods svgp dgp2 --splits 0-4
    python benchmarks/gp_uci.py --summary-only

Splits: the Gal / PBP standard splits in $ZOO_DATA/uci (20 per set, protein 5), inputs and targets
standardised on each training split. Salimbeni's bayesian_benchmarks numbers are on their own 10 splits
(90/10), so the comparison is across protocols. 100 inducing points per layer (k-means of the training
inputs), RBF-ARD kernels, inner layers of width min(30, D) with a PCA mean function, Adam (lr 0.05,
decayed to 0.005) on TraceMeanField_ELBO, minibatches of up to 10,000 points (--batch-size). gp-exact:
NUTS over its hyperparameters, one chain of 100 warmup and 100 kept draws, trees of depth 6 at most
(small sets only: its covariance is n x n).
Each finished split is appended to benchmarks/results/gp-uci-runs.jsonl; the table is rebuilt from all runs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _runs
from uci import mean_se, parse_splits

import zoo

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "gp-uci-runs.jsonl"
BNN_RUNS = RESULTS / "uci-runs.jsonl"

# Salimbeni & Deisenroth 2017 (bayesian_benchmarks), test log-likelihood: SVGP, DGP with 2 layers
PUBLISHED_LL = {"boston": (-2.398, -2.408), "concrete": (-3.168, -3.175), "energy": (-1.084, -0.721),
                "power": (-2.799, -2.790), "protein": (-2.901, -2.846), "wine": (-0.949, -0.954),
                "yacht": (-0.774, -0.458)}
# name -> (model, config, backend, backend options)
METHODS = {"svgp": ("svgp", {}, "svi", {}), "dgp2": ("dgp", {"num_layers": 2}, "svi", {}),
           "dgp3": ("dgp", {"num_layers": 3}, "svi", {}),
           "gp-exact": ("gp-exact", {}, "nuts", {"num_warmup": 100, "num_samples": 100, "num_chains": 1,
                                                        "max_tree_depth": 6})}


def run(datasets, methods, splits, num_steps, batch_size):
    for name in datasets:
        for split in splits:
            if name == "protein" and split >= 5:
                continue
            data = zoo.datasets.load(name, split=split)
            for method in methods:
                model_name, config, backend, options = METHODS[method]
                model = zoo.load(model_name, data=data, **config)
                if backend == "svi":
                    options = {"num_steps": num_steps, "batch_size": batch_size}
                start = time.perf_counter()
                post = zoo.fit(model, data.train, backend, seed=split, progress=False, **options)
                seconds = time.perf_counter() - start
                row = {"dataset": name, "method": method, "split": split, **options,
                       **post.evaluate(data.test), "seconds": round(seconds, 1),
                       "machine": f"{platform.machine()} {torch.get_num_threads()} threads"}
                _runs.append(RUNS, row)
                print(f"{name:9s} split {split:2d} {method:5s} rmse {row['rmse']:.3f} ll {row['test_ll']:.3f} "
                      f"({seconds:.0f} s)", flush=True)


def _pm(mean_and_se) -> str:
    mean, se = mean_and_se
    return f"{mean:.2f}" if math.isnan(se) else f"{mean:.2f} ± {se:.2f}"


def _budget(row: dict) -> str:
    if "batch_size" in row:
        return f"{row['num_steps']} steps, batch {row['batch_size']}"
    if "num_warmup" in row:
        return f"NUTS {row['num_warmup']} + {row['num_samples']}"
    return ""


def summarise() -> str:
    groups = defaultdict(dict)
    for r in _runs.read(RUNS) if RUNS.exists() else []:
        groups[(r["dataset"], r["method"])][r["split"]] = r
    for r in _runs.read(BNN_RUNS) if BNN_RUNS.exists() else []:
        groups[(r["dataset"], f"bnn {r['method']}")][r["split"]] = r
    lines = ["| dataset | method | splits | RMSE | test LL | published LL (Salimbeni) | budget | s / split |",
             "|---|---|---|---|---|---|---|---|"]
    summary = {}
    for dataset, (svgp_ll, dgp_ll) in PUBLISHED_LL.items():
        for (name, method), runs in sorted(groups.items()):
            if name != dataset or not runs:
                continue
            rows = list(runs.values())
            rmse, ll = mean_se([r["rmse"] for r in rows]), mean_se([r["test_ll"] for r in rows])
            secs = sum(r["seconds"] for r in rows) / len(rows)
            ref = {"svgp": svgp_ll, "dgp2": dgp_ll}.get(method)
            summary[f"{dataset}/{method}"] = {"splits": len(rows), "rmse": rmse, "test_ll": ll, "seconds": secs}
            lines.append(f"| {dataset} | {method} | {len(rows)} | {_pm(rmse)} | {_pm(ll)} | "
                         f"{'' if ref is None else f'{ref:.3f}'} | {_budget(rows[0])} | {secs:.0f} |")
    (RESULTS / "gp-uci.json").write_text(json.dumps({"ours": summary, "published_ll": PUBLISHED_LL}, indent=1))
    table, compact = "\n".join(lines), side_by_side(summary)
    (RESULTS / "gp-uci.md").write_text(
        "# UCI regression with sparse and deep GPs\n\nMean ± standard error over the splits run (Gal/PBP "
        "standard splits); RMSE and per-point test log-likelihood in original units. Published: Salimbeni & "
        "Deisenroth 2017 via bayesian_benchmarks, on their own 10 splits. bnn rows: the zoo's own runs of "
        "benchmarks/uci.py. s / split is wall time on a 2-core CPU shared with other jobs.\n\n"
        "Test log-likelihood side by side (splits run in brackets):\n\n" + compact + "\n\nAll runs:\n\n"
        + table + "\n")
    return compact


def side_by_side(summary: dict) -> str:
    """Per dataset: the test LL of svgp, dgp2, dgp3, published SVGP / DGP2, gp-exact, best bnn; s / split of the 3."""
    lines = ["| dataset | svgp | dgp2 | dgp3 | published SVGP / DGP2 | gp-exact | best bnn | s / split |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(key):
        row = summary.get(key)
        return "" if row is None else f"{_pm(row['test_ll'])} ({row['splits']})"

    for dataset, (svgp_ll, dgp_ll) in PUBLISHED_LL.items():
        methods = ["svgp", "dgp2", "dgp3"]
        if not any(f"{dataset}/{m}" in summary for m in methods):
            continue
        bnn = [k for k in summary if k.startswith(f"{dataset}/bnn ")]
        best = max(bnn, key=lambda k: summary[k]["test_ll"][0], default=None)
        best_cell = "" if best is None else f"{cell(best)} {best.split('/bnn ')[1]}"
        secs = ", ".join(f"{summary[f'{dataset}/{m}']['seconds']:.0f}" if f"{dataset}/{m}" in summary else "-"
                         for m in methods)
        ours = " | ".join(cell(f"{dataset}/{m}") for m in methods)
        lines.append(f"| {dataset} | {ours} | {svgp_ll:.3f} / {dgp_ll:.3f} | {cell(f'{dataset}/gp-exact')} | "
                     f"{best_cell} | {secs} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(PUBLISHED_LL))
    parser.add_argument("--methods", nargs="+", default=["svgp", "dgp2", "dgp3"], choices=list(METHODS))
    parser.add_argument("--splits", default="0-19")
    parser.add_argument("--num-steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.summary_only:
        run(args.datasets, args.methods, parse_splits(args.splits), args.num_steps, args.batch_size)
    print(summarise())


if __name__ == "__main__":
    main()
