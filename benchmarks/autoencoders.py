"""MNIST (grey levels): denoising AE vs a plain AE of the same size, the sparse AE as lambda varies, and the
contractive AE as lambda varies beside a plain and a denoising AE of its (sigmoid) architecture.

    python benchmarks/autoencoders.py --epochs 10
    python benchmarks/autoencoders.py --summary-only

Every model is 784-500-200 (relu) with a squared-error decoder (Normal, sigma^2 = 1/2) and MAP codes
(the delta guide), trained with Adam on minibatches of 100. The denoising AE reads masked inputs
(25 % of pixels zeroed, fresh each step); the plain AE is the same model with corruption='none'. Both
are scored by the squared error of their reconstruction of the clean test image from a corrupted
one. The sparse AE is scored by reconstruction error and code sparsity (fraction of |h_i| < eps).
The contractive AE (784-500-200 sigmoid, Rifai et al. 2011) is scored by reconstruction error, the
encoder's Jacobian norm ||dh/dx||_F and the contraction ratio ||h(x + e) - h(x)|| / ||e|| for isotropic
Gaussian e of two sizes; lambda = 0 is the plain AE of that architecture.
Runs append to benchmarks/results/autoencoders-runs.jsonl; the tables are rebuilt from all runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import _runs
import torch

import zoo
from zoo.models.corruption import corruption

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "autoencoders-runs.jsonl"
TEST_CORRUPTIONS = {"none": None, "masking 25%": ("masking", 0.25), "masking 50%": ("masking", 0.5),
                    "gaussian 0.3": ("gaussian", 0.3), "salt-and-pepper 25%": ("salt-and-pepper", 0.25)}
EPSILONS = (0.01, 0.1)
PERTURBATIONS = (0.01, 0.1)  # the std of each pixel's perturbation, for the contraction ratio


def squared_error(post, x_seen, x_clean) -> float:
    """Per-image sum of squared errors between the reconstruction of ``x_seen`` and ``x_clean``."""
    return float((post.reconstruct(x_seen) - x_clean).pow(2).flatten(1).sum(1).mean())


def denoising_rows(data, epochs, seed):
    torch.manual_seed(seed + 1)
    x = data.test.x
    seen = {name: x if spec is None else corruption(*spec)(x) for name, spec in TEST_CORRUPTIONS.items()}
    for label, options in (("plain AE", dict(corruption="none")),
                           ("denoising AE (masking 25%)", dict(corruption="masking", level=0.25))):
        post, fit_s = _fit(zoo.load("denoising-ae", data=data, **options), data, epochs, seed)
        errors = {f"se_{name}": squared_error(post, noisy, x) for name, noisy in seen.items()}
        yield {"bench": "denoising", "model": label, **errors, "fit_s": fit_s}


def sparse_rows(data, epochs, seed, lams):
    for lam in lams:
        post, fit_s = _fit(zoo.load("sparse-ae", data=data, lam=lam), data, epochs, seed)
        codes = post.encode(data.test.x).abs()
        row = {"bench": "sparse", "model": "sparse-ae", "lam": lam, "se": squared_error(post, data.test.x, data.test.x),
               "mean_abs_code": float(codes.mean()), "fit_s": fit_s}
        row.update({f"sparsity_{eps:g}": float((codes < eps).float().mean()) for eps in EPSILONS})
        yield row


def contractive_rows(data, epochs, seed, lams):
    x = data.test.x
    torch.manual_seed(seed + 2)
    moves = {std: std * torch.randn_like(x) for std in PERTURBATIONS}
    models = [(f"contractive-ae (lambda {lam:g})", lam, zoo.load("contractive-ae", data=data, lam=lam)) for lam in lams]
    models.append(("denoising AE (masking 25%)", None, zoo.load("denoising-ae", data=data, activation="sigmoid")))
    for label, lam, model in models:
        post, fit_s = _fit(model, data, epochs, seed)
        with torch.no_grad():
            jacobian = float(post.net.encoder.contraction(x.flatten(1)).sqrt().mean())
        code = post.encode(x)
        row = {"bench": "contractive", "model": label, "lam": lam, "se": squared_error(post, x, x),
               "jacobian_norm": jacobian, "fit_s": fit_s}
        row.update({f"ratio_{std:g}": float(((post.encode(x + e) - code).norm(dim=1) / e.flatten(1).norm(dim=1)).mean())
                    for std, e in moves.items()})
        yield row


def _fit(model, data, epochs, seed):
    start = time.perf_counter()
    post = zoo.fit(model, data.train, num_epochs=epochs, seed=seed, progress=False)
    return post, time.perf_counter() - start


def run(benches, epochs, lams, contractive_lams, path, seed, threads, fraction):
    torch.set_num_threads(threads)
    data = zoo.datasets.load("mnist", path=path, fraction=fraction, seed=seed)
    rows = itertools.chain(  # generators: each row is kept the moment its fit ends
        denoising_rows(data, epochs, seed) if "denoising" in benches else (),
        sparse_rows(data, epochs, seed, lams) if "sparse" in benches else (),
        contractive_rows(data, epochs, seed, contractive_lams) if "contractive" in benches else ())
    for row in rows:
        row.update(epochs=epochs, train_size=len(data.train), hardware=f"{platform.machine()}, "
                   f"{torch.get_num_threads()} threads, CPU", torch=torch.__version__)
        print(json.dumps(row), flush=True)
        _runs.append(RUNS, row)


def summarise():
    runs = _runs.read(RUNS) if RUNS.exists() else []
    denoising = {(r["epochs"], r["model"]): r for r in runs if r["bench"] == "denoising"}
    sparse = {(r["epochs"], r["lam"]): r for r in runs if r["bench"] == "sparse"}
    contractive = {(r["epochs"], r["model"]): r for r in runs if r["bench"] == "contractive"}
    lines = ["# Autoencoders on MNIST (grey levels)", "",
             "784-500-200 relu, squared-error decoder, MAP codes (delta guide), Adam, minibatches of 100; "
             "fit_s is wall seconds on a 2-core CPU shared with other jobs.", "",
             "## Denoising AE vs plain AE", "",
             "Squared error per test image (sum over 784 pixels) between the reconstruction of a corrupted "
             "test image and the clean one; the corruption is drawn once, the same for both models.", "",
             "| model | epochs | " + " | ".join(TEST_CORRUPTIONS) + " | fit_s |",
             "|---|---|" + "---|" * len(TEST_CORRUPTIONS) + "---|"]
    for (epochs, name), r in sorted(denoising.items()):
        cells = " | ".join(f"{r[f'se_{c}']:.2f}" for c in TEST_CORRUPTIONS)
        lines.append(f"| {name} | {epochs} | {cells} | {r['fit_s']:.0f} |")
    lines += ["", "## Sparse AE: sparsity and reconstruction as lambda varies", "",
              "Code h = the encoder's MAP code (200 units, no output nonlinearity); Laplace(0, 1/lambda) prior, "
              "so the loss is the squared error + lambda * ||h||_1. Sparsity: fraction of |h_i| below eps "
              "over the test set.", "",
              "| lambda | epochs | squared error / image | mean abs h | " +
              " | ".join(f"fraction abs h < {eps:g}" for eps in EPSILONS) + " | fit_s |",
              "|---|---|---|---|" + "---|" * len(EPSILONS) + "---|"]
    for (epochs, lam), r in sorted(sparse.items()):
        cells = " | ".join(f"{r[f'sparsity_{eps:g}']:.3f}" for eps in EPSILONS)
        lines.append(f"| {lam:g} | {epochs} | {r['se']:.2f} | {r['mean_abs_code']:.4f} | {cells} | {r['fit_s']:.0f} |")
    lines += ["", "## Contractive AE: invariance and reconstruction as lambda varies", "",
              "784-500-200 sigmoid (Rifai et al. 2011), the loss per image the squared error + lambda * "
              "||dh/dx||_F^2 (closed form); lambda 0 is the plain AE of this architecture, and the denoising "
              "AE is the same sigmoid network. Jacobian: the mean of ||dh/dx||_F over the test images; ratio: "
              "the mean of ||h(x + e) - h(x)|| / ||e|| for e ~ N(0, std^2 I).", "",
              "| model | epochs | squared error / image | Jacobian norm | " +
              " | ".join(f"ratio, std {std:g}" for std in PERTURBATIONS) + " | fit_s |",
              "|---|---|---|---|" + "---|" * len(PERTURBATIONS) + "---|"]
    for (epochs, _), r in sorted(contractive.items(), key=lambda kv: (kv[0][0], kv[1]["lam"] is None,
                                                                       kv[1]["lam"] or 0)):
        cells = " | ".join(f"{r[f'ratio_{std:g}']:.3f}" for std in PERTURBATIONS)
        lines.append(f"| {r['model']} | {epochs} | {r['se']:.2f} | {r['jacobian_norm']:.3f} | {cells} | "
                     f"{r['fit_s']:.0f} |")
    first = next(iter(runs), None)
    if first:
        lines += ["", f"Hardware: {first['hardware']}, torch {first['torch']}; {first['train_size']:,} training "
                  "images.", ""]
    (RESULTS / "autoencoders.md").write_text("\n".join(lines))
    (RESULTS / "autoencoders.json").write_text(json.dumps(
        list(denoising.values()) + list(sparse.values()) + list(contractive.values()), indent=1))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benches", nargs="+", default=["denoising", "sparse", "contractive"],
                        choices=["denoising", "sparse", "contractive"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lams", type=float, nargs="+", default=[0.01, 0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--contractive-lams", type=float, nargs="+", default=[0.0, 0.1, 1.0, 10.0])
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of the training images used")
    parser.add_argument("--path", default=None, help="folder with the MNIST IDX files (default: $ZOO_DATA/mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        run(args.benches, args.epochs, args.lams, args.contractive_lams, args.path, args.seed, args.threads,
            args.fraction)
    summarise()


if __name__ == "__main__":
    main()
