"""The zoo's samplers and approximations against posteriordb's reference posteriors (10,000 Stan draws).

    python benchmarks/posteriordb.py                       # every posterior and backend
    python benchmarks/posteriordb.py --posteriors arK-arK --backends nuts
    python benchmarks/posteriordb.py --summary-only

Per posterior and backend: the worst |mean - reference| / reference sd and |sd - reference sd| / reference sd
over the parameters, the worst R-hat and smallest bulk ESS (samplers), the PSIS k-hat (svi, laplace) and the
wall time. nuts: 4 batched chains of 500 warmup + 1,000 draws; chees: 64 chains of 500 + 200; pyro-nuts
(Pyro's kernel; the rows named "nuts" before the batched sampler were this one): 2 chains of 500 + 1,000;
laplace: exact Hessian, prior left as written (no evidence tuning); svi: full-rank Gaussian, 5,000 Adam steps
(lr 0.02 decayed to 0.0002), 4,000 draws. Each finished run is appended to
benchmarks/results/posteriordb-runs.jsonl; the table is rebuilt from all runs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _runs

import zoo
from zoo.datasets import pdb
from zoo.inference.arviz import convergence_stats, pareto_k

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "posteriordb-runs.jsonl"
BACKENDS = {
    "nuts": dict(num_warmup=500, num_samples=1000, num_chains=4),
    "chees": dict(num_warmup=500, num_samples=200, num_chains=64),
    "pyro-nuts": dict(num_warmup=500, num_samples=1000, num_chains=2),
    "laplace": dict(curvature="exact", tune_prior=False, num_steps=5000, lr=0.02, num_samples=4000),
    "svi": dict(guide="full-rank", num_steps=5000, lr=0.02, lr_decay=0.01, num_samples=4000),
}


def run(name: str, backend: str, seed: int) -> dict:
    ref = pdb.load_reference(name)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", zoo.ZooWarning)
        try:
            post = zoo.fit(zoo.load(f"pdb-{name}"), ref.args, backend, seed=seed, progress=False,
                           **BACKENDS[backend])
        except zoo.ZooError as err:  # a failed fit is a result too
            return {"posterior": name, "backend": backend, "seed": seed, "error": str(err)}
    wall = time.perf_counter() - start
    row = {"posterior": name, "backend": backend, "seed": seed, "wall_s": round(wall, 1),
           "vectorized": post.info["vectorized"], **({"init": post.info["init"]} if "init" in post.info else {}),
           **{k: v for k, v in pdb.agreement(post, ref).items() if not isinstance(v, dict)},
           "warnings": [str(w.message) for w in caught]}
    if "diverging" in post.sample_stats:  # the samplers
        draws = {k: v.cpu().numpy() for k, v in {**post.samples, **post.deterministic}.items()}
        stats = convergence_stats(draws)
        row["max_r_hat"] = float(max(np.max(s["r_hat"]) for s in stats.values()))
        row["min_ess_bulk"] = float(min(np.min(s["ess_bulk"]) for s in stats.values()))
        row["divergences"] = int(post.sample_stats["diverging"].sum())
    elif "log_ratio" in post.sample_stats:
        row["pareto_k"] = float(pareto_k(post.sample_stats["log_ratio"].cpu().numpy().ravel())[0])
    return row


def summarise(rows: list[dict]) -> None:
    latest = {}
    for row in rows:  # the newest run of each posterior and backend
        latest[row["posterior"], row["backend"]] = row
    head = ("| posterior | backend | worst abs(d mean)/sd | worst abs(d sd)/sd | max R-hat | min bulk ESS | "
            "divergences | PSIS k | path | wall (s) |")
    lines = ["# posteriordb: the zoo against reference posteriors", "",
             "Reference: posteriordb's 10,000 Stan NUTS draws per posterior (10 chains x 1,000). "
             "Settings in benchmarks/posteriordb.py. Machine: " + platform.processor() + ", torch "
             + torch.__version__ + ", 1 thread.", "", head, "|" + "---|" * 10]
    for (name, backend), r in sorted(latest.items()):
        if "error" in r:
            lines.append(f"| {name} | {backend} | failed: {r['error']} |" + " |" * 7)
            continue
        cells = [name, backend, f"{r['worst_mean']:.3f} ({r['worst_mean_param']})",
                 f"{r['worst_sd']:.3f} ({r['worst_sd_param']})", _fmt(r.get("max_r_hat"), 3),
                 _fmt(r.get("min_ess_bulk"), 0), str(r.get("divergences", "")), _fmt(r.get("pareto_k"), 2),
                 r["vectorized"], f"{r['wall_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    (RESULTS / "posteriordb.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "posteriordb.json").write_text(json.dumps(list(latest.values()), indent=1))
    print("\n".join(lines))


def _fmt(value, digits):
    return "" if value is None else f"{value:.{digits}f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posteriors", nargs="*", default=pdb.names())
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.summary_only:
        for name in args.posteriors:
            for backend in args.backends:
                row = run(name, backend, args.seed)
                _runs.append(RUNS, row)
                print(json.dumps(row), flush=True)
    summarise(_runs.read(RUNS))


if __name__ == "__main__":
    main()
