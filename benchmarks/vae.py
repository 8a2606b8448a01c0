"""Binarised MNIST: test log-likelihood of ``vae`` and ``vae-iaf`` by the IWAE bound with k = 5,000.

    python benchmarks/vae.py --models vae vae-iaf --epochs 150 [--binarization dynamic]
    python benchmarks/vae.py --summary-only

Data: $ZOO_DATA/mnist (or --path). Fixed binarisation: every pixel drawn once as Bernoulli(intensity) with a
fixed seed, so every epoch sees the same 0/1 images (which favours overfitting). Dynamic (Burda et al.'s
setting): the model fits the grey levels, drawing fresh 0/1 pixels at every step. Both are tested on the
same fixed binarisation of the test digits.
Architecture as Burda et al. 2016, one stochastic layer: 784-200-200-50 tanh encoder and decoder,
Bernoulli likelihood; Adam, minibatches of 100, lr 1e-3 decayed to 1e-4. Each run is appended to
benchmarks/results/vae-runs.jsonl; the summary table is rebuilt from all runs.
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

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "vae-runs.jsonl"
# Burda, Grosse & Salakhutdinov 2016, Table 1, one stochastic layer (784-200-200-50), test NLL in nats
# (their IWAE is trained with the k=50 bound: a tighter objective, not a flow guide)
PUBLISHED = {"VAE (k=1)": 86.76, "IWAE (k=50)": 84.78}
MODELS = ("vae", "vae-iaf")


def run(models, epochs, iwae_samples, test_points, path, seed, threads, binarization):
    torch.set_num_threads(threads)
    binary = zoo.datasets.load("mnist", path=path, binarize=True, flatten=True, seed=seed)
    dynamic = binarization == "dynamic"
    data = zoo.datasets.load("mnist", path=path, flatten=True, seed=seed) if dynamic else binary
    test = binary.test.x[:test_points]
    for name in models:
        model = zoo.load(name, data=data, **({"dynamic_binarization": True} if dynamic else {}))
        start = time.perf_counter()
        post = zoo.fit(model, data.train, num_epochs=epochs, batch_size=100, lr=1e-3, lr_decay=0.1,
                       seed=seed, progress=False)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        scores = post.evaluate(test, iwae_samples=iwae_samples)
        eval_s = time.perf_counter() - start
        row = {"model": name, "guide": post.code_family, "epochs": epochs, "binarisation": binarization,
               "test_points": int(test.shape[0]), "iwae_samples": iwae_samples,
               "test_nll": -scores["log_likelihood"], "test_neg_elbo": -scores["elbo"],
               "train_loss_last_epoch": sum(post.loss[-600:]) / len(post.loss[-600:]),
               "fit_s": fit_s, "eval_s": eval_s,
               "hardware": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
               "torch": torch.__version__}
        print(json.dumps(row), flush=True)
        _runs.append(RUNS, row)


def summarise():
    latest = {(row["model"], row.get("binarisation", "fixed"), row["epochs"], row["test_points"]): row
              for row in _runs.read(RUNS)}
    lines = ["# VAE on binarised MNIST", "",
             "Test NLL in nats (lower is better): -log p(x) estimated by the IWAE bound with k importance "
             "samples, and the negative ELBO, per test image, on one fixed binarisation of the test digits "
             "(a Bernoulli draw per pixel, seed 0). Training binarisation fixed (the same draw every epoch) or "
             "dynamic (a fresh draw at every step). Published: Burda et al. 2016, Table 1, one stochastic layer "
             "784-200-200-50, 3,280 epochs, dynamic binarisation, NLL by k = 5,000. fit_s and eval_s are wall "
             "seconds on a 2-core CPU shared with other jobs.", "",
             "| model | guide | binarisation | epochs | test images | k | test NLL (IWAE) | test -ELBO | fit_s | "
             "eval_s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, binarization, epochs, points), row in sorted(latest.items()):
        lines.append(f"| {name} | {row['guide']} | {binarization} | {epochs} | {points:,} | {row['iwae_samples']:,} | "
                     f"{row['test_nll']:.2f} | {row['test_neg_elbo']:.2f} | {row['fit_s']:.0f} | {row['eval_s']:.0f} |")
    lines += [f"| Burda et al. 2016, {name} | | dynamic | 3,280 | 10,000 | 5,000 | {nll} | | | |"
              for name, nll in PUBLISHED.items()]
    first = next(iter(latest.values()), None)
    if first:
        lines += ["", f"Hardware: {first['hardware']}, torch {first['torch']}.", ""]
    (RESULTS / "vae.md").write_text("\n".join(lines))
    (RESULTS / "vae.json").write_text(json.dumps(list(latest.values()), indent=1))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--iwae-samples", type=int, default=5000)
    parser.add_argument("--test-points", type=int, default=10000)
    parser.add_argument("--path", default=None, help="folder with the MNIST IDX files (default: $ZOO_DATA/mnist)")
    parser.add_argument("--binarization", choices=("fixed", "dynamic"), default="fixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        run(args.models, args.epochs, args.iwae_samples, args.test_points, args.path, args.seed, args.threads,
            args.binarization)
    summarise()


if __name__ == "__main__":
    main()
