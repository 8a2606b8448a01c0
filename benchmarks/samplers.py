"""Samplers side by side, in one run: the zoo's batched ``nuts`` against ``pyro-nuts`` and NumPyro's NUTS on the
same models (NumPyro twins written here line by line from the zoo's models; same priors, same data), and
``chees`` at the larger chain counts. The zoo's samplers run with ``density="compiled"``.

For each model and sampler: microseconds per leapfrog step per chain (sampling wall time, warmup included,
over the leapfrog steps all chains took), minimum bulk ESS over every coordinate, and that ESS per second
of wall time. NumPyro is timed warm (its NUTS kernel in one jitted scan over warmup and draws, the second
call) and cold (with the compile); the zoo's time is its sampling loop, after the one-off trace and
compilation. pyro-nuts steps are counted over the draws from tree depths and scaled to the warmup.

    pip install -e ".[bench]"         # numpyro, jax, jaxlib: references only, never used by the package
    python benchmarks/samplers.py      # writes benchmarks/results/samplers.{json,md}
    python benchmarks/samplers.py --quick
    taskset -c 1 python benchmarks/samplers.py --threads 1   # both sides on one core (the other one busy)
    python benchmarks/samplers.py --summary-only             # the markdown again from the JSON

The markdown ends with the issue's goals, ratio by ratio, against NumPyro's better row at each chain count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import numpy as np
import torch

import zoo
from zoo.models.gp_exact import JITTER

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Problem:
    name: str
    model: object  # a zoo model
    args: tuple  # torch tensors
    numpyro_model: object
    max_tree_depth: int


def _bnn_numpyro(sizes, activation, precision_prior):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    act = {"tanh": jnp.tanh, "relu": lambda h: jnp.maximum(h, 0.0)}[activation]

    def model(x, y):
        h = x
        for i, (n_in, n_out) in enumerate(sizes):
            w = numpyro.sample(f"w{i}", nd.Normal(0.0, 1.0).expand([n_out, n_in]).to_event(2))
            b = numpyro.sample(f"b{i}", nd.Normal(0.0, 1.0).expand([n_out]).to_event(1))
            h = h @ w.T + b
            if i < len(sizes) - 1:
                h = act(h)
        precision = numpyro.sample("precision", nd.Gamma(*precision_prior))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", nd.Normal(h[:, 0], precision ** -0.5), obs=y)

    return model


def _eight_schools_numpyro(sigma, y):
    import numpyro
    import numpyro.distributions as nd

    mu = numpyro.sample("mu", nd.Normal(0.0, 5.0))
    tau = numpyro.sample("tau", nd.HalfCauchy(5.0))
    with numpyro.plate("J", len(sigma)):
        theta_raw = numpyro.sample("theta_raw", nd.Normal(0.0, 1.0))
        numpyro.sample("obs", nd.Normal(mu + tau * theta_raw, sigma), obs=y)


def _gp_numpyro(x, y):
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    lengthscale = numpyro.sample("lengthscale", nd.LogNormal(jnp.zeros(x.shape[1]), 1.0).to_event(1))
    outputscale = numpyro.sample("outputscale", nd.LogNormal(0.0, 1.0))
    noise = numpyro.sample("noise", nd.LogNormal(-2.0, 1.0))
    a = x / lengthscale
    d2 = ((a[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    k = outputscale * jnp.exp(-0.5 * d2) + (noise**2 + JITTER) * jnp.eye(x.shape[0])
    numpyro.sample("y", nd.MultivariateNormal(jnp.zeros(x.shape[0]), k), obs=y)


def eight_schools_model(sigma, y=None):
    import pyro
    import pyro.distributions as dist

    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("J", len(sigma)):
        theta_raw = pyro.sample("theta_raw", dist.Normal(0.0, 1.0))
        return pyro.sample("obs", dist.Normal(mu + tau * theta_raw, sigma), obs=y)


def problems(names) -> list[Problem]:
    """The models named, in the order given."""
    def bnn_1_20_1():  # the model: 1-20-1 tanh, 100 points
        gen = torch.Generator().manual_seed(0)
        x = torch.linspace(-3, 3, 100).unsqueeze(-1)
        y = torch.sin(x[:, 0]) + 0.1 * torch.randn(100, generator=gen)
        model = zoo.load("bnn", in_features=1, hidden=[20], activation="tanh")
        return Problem("bnn-1-20-1", model, (x, y), _bnn_numpyro([(1, 20), (20, 1)], "tanh", (1.0, 0.01)), 10)

    def eight_schools():
        y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
        sigma = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])
        return Problem("eight-schools", eight_schools_model, (sigma, y), _eight_schools_numpyro, 10)

    def bnn_yacht():
        data = zoo.datasets.load("yacht", split=0)
        sizes = [(data.train.args[0].shape[1], 50), (50, 1)]
        return Problem("bnn-yacht", zoo.load("bnn", data=data, hidden=[50]), data.train.args,
                       _bnn_numpyro(sizes, "relu", (1.0, 0.01)), 8)

    def gp_yacht():
        data = zoo.datasets.load("yacht", split=0)
        return Problem("gp-yacht", zoo.load("gp-exact", data=data), data.train.args, _gp_numpyro, 8)

    known = {"bnn-1-20-1": bnn_1_20_1, "eight-schools": eight_schools, "bnn-yacht": bnn_yacht, "gp-yacht": gp_yacht}
    return [known[name]() for name in names]


def min_bulk_ess(samples: dict) -> float:
    """The smallest bulk ESS over every coordinate of every site; samples are (chain, draw, ...) arrays."""
    worst = np.inf
    for value in samples.values():
        value = np.asarray(value).reshape(*value.shape[:2], -1)
        for j in range(value.shape[-1]):
            worst = min(worst, float(az.ess(value[:, :, j], method="bulk")))
    return worst


def run_zoo(problem: Problem, backend: str, chains: int, warmup: int, draws: int) -> dict:
    torch.manual_seed(0)
    options = {"nuts": dict(max_tree_depth=problem.max_tree_depth, density="compiled"),
               "chees": dict(density="compiled"), "pyro-nuts": dict(max_tree_depth=problem.max_tree_depth)}[backend]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = zoo.fit(problem.model, problem.args, backend, num_chains=chains, num_warmup=warmup,
                       num_samples=draws, seed=0, progress=False, **options)
    wall = time.perf_counter() - start
    samples = {k: v.numpy() for k, v in post.samples.items()}
    if backend != "pyro-nuts":
        seconds, steps, how = post.info["sampling_seconds"], sum(post.info["leapfrog_steps"]), "counted"
    else:  # Pyro's kernel reports tree depths only: steps over the draws, scaled up to warmup as well
        depth = post.sample_stats["tree_depth"].double()
        seconds, steps, how = wall, float((2**depth - 1).sum()) * (warmup + draws) / draws, "from tree depth"
    return _row(problem, f"zoo {backend}", chains, seconds, wall, steps, samples, how)


def run_numpyro(problem: Problem, chains: int, warmup: int, draws: int, method: str) -> dict:
    """NumPyro's NUTS kernel stepped by one jitted scan over warmup and draws (what ``MCMC.run`` compiles),
    timed on its second call; ``MCMC.run`` itself initialises and traces again on every call, seconds
    whatever the run's length. Bulk ESS is computed on the unconstrained draws: it is rank-based, so the
    same as on the constrained ones."""
    import jax
    from numpyro.infer import NUTS

    args = tuple(jax.numpy.asarray(a.numpy()) for a in problem.args)
    kernel = NUTS(problem.numpyro_model, max_tree_depth=problem.max_tree_depth)
    keys = jax.random.split(jax.random.PRNGKey(0), chains)
    vectorized = method == "vectorized"

    @jax.jit
    def sample(state):
        def body(state, _):  # initialised with a batch of keys, the kernel steps its chains vmapped (as MCMC.run)
            state = kernel.sample(state, args, {})
            return state, (state.z, state.num_steps)
        return jax.lax.scan(body, state, None, length=warmup + draws)[1]

    starts = [kernel.init(keys, warmup, None, args, {})] if vectorized else [
        kernel.init(key, warmup, None, args, {}) for key in keys]
    start = time.perf_counter()
    jax.block_until_ready(sample(starts[0]))  # compiles
    cold = time.perf_counter() - start
    start = time.perf_counter()
    runs = [jax.block_until_ready(sample(state)) for state in starts]
    seconds = time.perf_counter() - start
    steps = sum(int(np.asarray(n).sum()) for _, n in runs)
    # (draw, chain, ...) per run: one run of C chains, or C runs of one
    draws_of = [{k: np.asarray(v)[warmup:] for k, v in z.items()} for z, _ in runs]
    samples = {k: (np.swapaxes(draws_of[0][k], 0, 1) if vectorized else np.stack([d[k] for d in draws_of]))
               for k in draws_of[0]}
    return _row(problem, f"numpyro ({method})", chains, seconds, cold + seconds, steps, samples, "counted")


def _row(problem, sampler, chains, seconds, wall, steps, samples, how) -> dict:
    ess = min_bulk_ess(samples)
    return dict(model=problem.name, sampler=sampler, chains=chains, seconds=round(seconds, 2),
                wall_cold=round(wall, 2), leapfrog_steps=int(steps), steps_counted=how,
                us_per_leapfrog_per_chain=round(1e6 * seconds / max(steps, 1), 1),
                min_bulk_ess=round(ess, 1), ess_per_second=round(ess / seconds, 2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer draws and chain counts (a smoke run)")
    parser.add_argument("--models", default="bnn-1-20-1,eight-schools,bnn-yacht,gp-yacht")
    parser.add_argument("--chains", default="1,4,64,256", help="chain counts for the zoo's nuts")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--no-numpyro", action="store_true")
    parser.add_argument("--no-pyro", action="store_true", help="skip pyro-nuts (slow)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch and XLA alike")
    parser.add_argument("--out", default=str(RESULTS / "samplers"))
    parser.add_argument("--summary-only", action="store_true", help="rewrite the markdown from the JSON")
    opts = parser.parse_args()
    out = Path(opts.out)
    if opts.summary_only:
        saved = json.loads(out.with_suffix(".json").read_text())
        return write(saved["rows"], out, saved["machine"])
    if opts.threads:  # before jax is imported: XLA reads its flags once
        torch.set_num_threads(opts.threads)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                                   f"intra_op_parallelism_threads={opts.threads}").strip()
    chain_counts = [1, 4] if opts.quick else [int(c) for c in opts.chains.split(",")]
    warmup, draws = (50, 50) if opts.quick else (opts.warmup, opts.draws)
    machine = dict(python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads(),
                   processor=platform.machine(), warmup=warmup, draws=draws)
    if not opts.no_numpyro:
        import jax
        import numpyro

        machine.update(numpyro=numpyro.__version__, jax=jax.__version__)
    rows = []

    def add(row):  # the tables are rewritten after every row: a long run stopped keeps what it measured
        rows.append(row)
        print(row, flush=True)
        write(rows, out, machine)

    for problem in problems(opts.models.split(",")):
        for chains in chain_counts:
            add(run_zoo(problem, "nuts", chains, warmup, draws))
        for chains in [c for c in chain_counts if c >= 64] or [16]:
            add(run_zoo(problem, "chees", chains, warmup, draws))
        if not opts.no_pyro:
            add(run_zoo(problem, "pyro-nuts", 1, warmup, draws))
        if not opts.no_numpyro:
            for chains, method in [(4, "sequential")] + [(c, "vectorized") for c in chain_counts if c > 1]:
                add(run_numpyro(problem, chains, warmup, draws, method))


def goals(rows) -> list[str]:
    """The issue's goals, ratio by ratio, for each model whose rows are there."""
    lines = ["| model | measurement | zoo | NumPyro | ratio | aim |", "|---|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        got = {(r["sampler"], r["chains"]): r for r in rows
               if r["model"] == model and "not measurable" not in r["steps_counted"]}

        def compare(label, chains, key, aim, better):  # against NumPyro's better row at that chain count
            ours = got.get(("zoo nuts", chains))
            theirs = [got[m, chains] for m in ("numpyro (vectorized)", "numpyro (sequential)") if (m, chains) in got]
            if ours and theirs and better(r[key] for r in theirs) > 0:
                a, b = ours[key], better(r[key] for r in theirs)
                lines.append(f"| {model} | {label} | {a} | {b} | {a / b:.2f} | {aim} |")

        for c in (4, 64):
            compare(f"µs / leapfrog / chain, nuts at {c} chains", c, "us_per_leapfrog_per_chain",
                    "≤ 3" if c == 4 else "≤ 1", min)
            compare(f"ESS / s, nuts at {c} chains", c, "ess_per_second", "≥ 1", max)
        zoo_best = max((r for r in got.values() if r["sampler"].startswith("zoo")), key=lambda r: r["ess_per_second"])
        theirs = [r for r in got.values() if r["sampler"].startswith("numpyro")]
        if theirs:
            best = max(theirs, key=lambda r: r["ess_per_second"])
            lines.append(f"| {model} | best ESS / s ({zoo_best['sampler']} {zoo_best['chains']}; {best['sampler']} "
                         f"{best['chains']}) | {zoo_best['ess_per_second']} | {best['ess_per_second']} | "
                         f"{zoo_best['ess_per_second'] / best['ess_per_second']:.2f} | ≥ 1 |")
    return lines


def write(rows, out: Path, machine: dict):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(dict(machine=machine, rows=rows), indent=1))
    lines = ["# Samplers side by side (benchmarks/samplers.py, one run)", "",
             f"{machine['warmup']} warmup + {machine['draws']} draws per chain; {machine}", "",
             "| model | sampler | chains | µs / leapfrog / chain | steps | min bulk ESS | ESS / s | seconds "
             "| cold wall (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['chains']} | {r['us_per_leapfrog_per_chain']} | "
                     f"{r['steps_counted']} | {r['min_bulk_ess']} | {r['ess_per_second']} | {r['seconds']} | "
                     f"{r['wall_cold']} |")
    lines += ["", "## Goals", ""] + goals(rows)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
