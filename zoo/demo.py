"""The main job: one Bayesian MLP, three inference backends, one table and az.compare."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import arviz as az

from . import datasets, fit, load
from ._errors import DiagnosticWarning, ZooWarning
from .plots import predictive_plot, trace_plot

# hidden=[20], trees of depth 8 and the compiled leaf keep NUTS (4 chains as one batch) to about 20 s on 2 CPU
# cores (60-75 s with a cold compile cache). Deeper trees or more chains do not bring the chains together: they
# sit in different modes of the network's weights (R-hat 1.5-1.8 on the noise precision).
SETTINGS = {
    "svi": dict(num_steps=3000, guide="mean-field"),
    "laplace": dict(),  # bnn's defaults: dense Fisher, linearised predictive, 3 rounds of MAP + evidence-tuned prior
    "nuts": dict(num_warmup=200, num_chains=4, max_tree_depth=8, density="compiled"),
}
QUICK = {"svi": dict(num_steps=200), "laplace": dict(num_steps=300, prior_rounds=1),
         "nuts": dict(num_warmup=30, num_chains=2, max_tree_depth=4)}


def run_demo(name: str = "yacht", split: int = 0, out: Path = Path("runs/demo"), quick: bool = False):
    data = datasets.load(name, split=split)
    model = load("bnn", data=data, hidden=[20])
    out.mkdir(parents=True, exist_ok=True)
    rows, idatas = [], {}
    for backend, options in (QUICK if quick else SETTINGS).items():
        num_samples = (50 if quick else 200) if backend == "nuts" else 1000
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ZooWarning)
            post = fit(model, data.train, backend, num_samples=num_samples, seed=0, **options)
        seconds = time.perf_counter() - start
        for w in caught:
            if not issubclass(w.category, DiagnosticWarning):  # the diagnosis below prints those
                print(f"  note: {w.message}")
        metrics = post.evaluate(data.test)
        idatas[backend] = post.to_arviz(data.train)  # LOO is defined on the data the fit saw
        post.save(out / backend)
        predictive_plot(post.predict(data.test.x), data.test.y_original, out / f"predictive-{backend}.png",
                        title=f"bnn / {backend} on {name} split {split}")
        rows.append((backend, metrics["rmse"], metrics["test_ll"], seconds))
        print(f"  {backend:8s} done in {seconds:.1f} s", flush=True)
        print("    " + str(post.diagnose()).replace("\n", "\n    "), flush=True)
    trace_plot(idatas["nuts"], ["precision"], out / "trace-nuts.png")
    print(f"\nbnn (1 hidden layer of 20) on UCI {name}, split {split}, test set of {len(data.test)} points")
    print(f"{'backend':10s}{'RMSE':>10s}{'test LL':>10s}{'time (s)':>10s}")
    for backend, rmse, ll, seconds in rows:
        print(f"{backend:10s}{rmse:10.3f}{ll:10.3f}{seconds:10.1f}")
    print("\naz.compare (elpd by PSIS-LOO on the training points; the warning column flags Pareto k > 0.7):")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-point Pareto-k warnings; the table's column says it once
        print(az.compare(idatas).to_string())
    print(f"\nwrote posteriors and plots to {out}/")
    return rows
