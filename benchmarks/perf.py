"""Speed ratios of the zoo against bare PyTorch, in one run.

(a) one SVI epoch of ``bnn`` (mean-field, batch 32) and of ``bayes-lenet`` (MC dropout, batch 128) with
    each ``elbo_step`` / one epoch of the same network trained as plain PyTorch (same data, Adam), each
    epoch's steady-state cost (the difference of two fit lengths), and the fit's fixed cost;
(b) one gradient of the flat log density NUTS samples (jit off and on) / a bare ``torch.autograd`` gradient
    of the same log density written by hand;
(c) ``Posterior.predict`` with 1,000 draws in one vectorised pass / a Python loop over the draws.

    python benchmarks/perf.py            # writes benchmarks/results/perf.{json,md}
"""

from __future__ import annotations

import json
import platform
import time
import warnings
from pathlib import Path

import pyro
import torch
from pyro import poutine

import zoo
from zoo.inference.flat import LogDensity, initial_point
from zoo.inference.sites import Sites

RESULTS = Path(__file__).resolve().parent / "results"


def best_of(fn, repeats=5):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def svi_epoch(model, train, batch_size, epochs, **options):
    """An epoch's steady-state cost (fits of E and 3E epochs, the difference over 2E) and a fit's fixed
    cost (tracing, compiling, drawing from the guide)."""
    def fit(n):
        return best_of(lambda: zoo.fit(model, train, "svi", num_epochs=n, batch_size=batch_size, num_samples=1,
                                       progress=False, seed=0, **options), repeats=2)

    short, long = fit(epochs), fit(3 * epochs)
    epoch = (long - short) / (2 * epochs)
    return epoch, short - epochs * epoch


def torch_epoch(forward, params, x, y, batch_size, epochs):
    """An epoch of plain PyTorch: ``forward(x, y) -> loss`` under Adam, minibatches of a fresh permutation."""
    optim = torch.optim.Adam(params, lr=1e-2)

    def run():
        for _ in range(epochs):
            for idx in torch.randperm(len(x)).split(batch_size):
                loss = forward(x[idx], y[idx])
                optim.zero_grad()
                loss.backward()
                optim.step()

    return best_of(run, repeats=3) / epochs


def bnn_rows(data, epochs=40, batch_size=32):
    x, y = data.train.args
    model = zoo.load("bnn", data=data, hidden=[50])
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 50), torch.nn.ReLU(), torch.nn.Linear(50, 1))
    log_noise = torch.zeros((), requires_grad=True)

    def forward(xb, yb):
        return -torch.distributions.Normal(net(xb).squeeze(-1), log_noise.exp()).log_prob(yb).sum()

    reference = torch_epoch(forward, [*net.parameters(), log_noise], x, y, batch_size, epochs)
    return svi_rows(f"bnn mean-field (batch {batch_size})", model, data.train, batch_size, epochs, reference, 2.0)


def lenet_rows(epochs=2, batch_size=128):
    """bayes-lenet (MC dropout) against the same LeNet-5 with the same dropout and weight decay, on the
    2,000 training images of mnist-mini."""
    data = zoo.datasets.load("mnist-mini")
    x, y = data.train.args
    model = zoo.load("bayes-lenet", data=data)
    f = torch.nn.functional
    layers = torch.nn.ModuleList([torch.nn.Conv2d(1, 20, 5), torch.nn.Conv2d(20, 50, 5), torch.nn.Linear(800, 500),
                                  torch.nn.Linear(500, 10)])

    def forward(xb, yb):
        h = f.max_pool2d(f.relu(layers[0](xb)), 2)
        h = f.max_pool2d(f.relu(layers[1](f.dropout(h, 0.2))), 2)
        h = f.relu(layers[2](f.dropout(h.flatten(1), 0.5)))
        logits = layers[3](f.dropout(h, 0.5))
        decay = sum(p.square().sum() for p in layers.parameters())
        return f.cross_entropy(logits, yb, reduction="sum") * len(x) / len(xb) + 0.5 * decay

    reference = torch_epoch(forward, list(layers.parameters()), x, y, batch_size, epochs)
    return svi_rows(f"bayes-lenet mc-dropout (batch {batch_size})", model, data.train, batch_size, epochs,
                    reference, 1.2)


def svi_rows(label, model, train, batch_size, epochs, reference, aim):
    rows = []
    for step in ("pyro", "traced", "compiled"):
        epoch, fixed = svi_epoch(model, train, batch_size, epochs, elbo_step=step)
        rows.append((f"SVI epoch, {label}, elbo_step={step!r} / plain PyTorch", epoch, reference,
                     aim if step == "compiled" else None))
        rows.append(("  (fixed cost of that fit: tracing, compiling, guide draws; against one epoch)", fixed,
                     reference, None))
    return rows


def nuts_gradient_ratio(data, jit):
    """The gradient NUTS takes: the zoo's flat log density (traced with TorchScript when jit), one vector."""
    x, y = data.train.args
    model = zoo.load("bnn", data=data, hidden=[50])
    sites = Sites.of(model.model, (x, y), init_loc_fn=model.init_loc_fn)
    latents, theta = initial_point(model.model, (x, y), sites, model.init_loc_fn)
    density = LogDensity(model.model, (x, y), sites, latents, "plate")
    if jit:
        density = torch.jit.trace(density.__call__, theta.clone(), check_trace=False)

    def zoo_grad():
        for _ in range(100):
            t = theta.clone().requires_grad_(True)
            torch.autograd.grad(-density(t), t)

    zoo_grad()  # compile / warm up
    pyro_time = best_of(zoo_grad) / 100
    z = {n: latents.transforms[n].inv(v).detach() for n, v in latents.constrain(theta).items()}
    a, b = model.config["precision_prior"]
    params = {k: v.clone().requires_grad_(True) for k, v in z.items()}

    def log_density():
        w0, b0, w1, b1, log_prec = (params[k] for k in ("w0", "b0", "w1", "b1", "precision"))
        prior = torch.distributions.Normal(0.0, 1.0)
        lp = sum(prior.log_prob(p).sum() for p in (w0, b0, w1, b1))
        prec = log_prec.exp()
        lp = lp + torch.distributions.Gamma(a, b).log_prob(prec) + log_prec
        f = (torch.relu(x @ w0.T + b0) @ w1.T + b1).squeeze(-1)
        return lp + torch.distributions.Normal(f, prec.rsqrt()).log_prob(y).sum()

    def torch_grad():
        for _ in range(100):
            torch.autograd.grad(-log_density(), list(params.values()))

    torch_time = best_of(torch_grad) / 100
    return pyro_time, torch_time


def pyro_potential_time(data, jit):
    """For comparison in the same run: a gradient of Pyro's own NUTS potential of the same model."""
    x, y = data.train.args
    model = zoo.load("bnn", data=data, hidden=[50])
    kernel = pyro.infer.mcmc.NUTS(model.model, jit_compile=jit, ignore_jit_warnings=True,
                                  init_strategy=model.init_loc_fn, max_plate_nesting=1)
    kernel.setup(0, x, y)
    z = {k: v.detach() for k, v in kernel.initial_params.items()}

    def pyro_grad():
        for _ in range(100):
            pyro.ops.integrator.potential_grad(kernel.potential_fn, z)

    pyro_grad()  # compile / warm up
    return best_of(pyro_grad) / 100


def predict_ratio(data, draws=1000):
    model = zoo.load("bnn", data=data, hidden=[50])
    post = zoo.fit(model, data.train, "svi", num_steps=10, num_samples=draws, progress=False, seed=0)
    x = data.test.x
    vectorised = best_of(lambda: post.predict(x), repeats=3)
    flat = post.flat_samples()

    def looped():
        outs = []
        for s in range(draws):
            values = {k: v[s] for k, v in flat.items()}
            trace = poutine.trace(poutine.condition(model.model, values)).get_trace(x)
            outs.append(trace.nodes["f"]["value"])
        return torch.stack(outs).mean(0)

    with torch.no_grad():
        loop_time = best_of(looped, repeats=1)
    return vectorised, loop_time


def main():
    warnings.simplefilter("ignore")
    data = zoo.datasets.load("boston", split=0)
    rows = []
    rows += bnn_rows(data)
    rows += lenet_rows()
    for jit in (False, True):
        ours, ref = nuts_gradient_ratio(data, jit)
        rows.append((f"NUTS gradient of the flat log density, jit={'on' if jit else 'off'} / bare torch.autograd",
                     ours, ref, 1.5))
        rows.append((f"  (Pyro's own NUTS potential, jit={'on' if jit else 'off'} / bare torch.autograd)",
                     pyro_potential_time(data, jit), ref, None))
    vec, loop = predict_ratio(data)
    rows.append(("predict 1,000 draws, vectorised / Python loop", vec, loop, "≪ 1"))
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    lines = ["| measurement | zoo (ms) | reference (ms) | ratio | aim |", "|---|---|---|---|---|"]
    for name, a, b, aim in rows:
        goal = f"≤ {aim:.1f}" if isinstance(aim, float) else aim or ""
        lines.append(f"| {name} | {a * 1e3:.3f} | {b * 1e3:.3f} | {a / b:.2f} | {goal} |")
    table = "\n".join(lines)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "perf.json").write_text(json.dumps(
        {"machine": machine, "torch": torch.__version__, "pyro": pyro.__version__,
         "rows": [{"name": n, "zoo_s": a, "reference_s": b, "ratio": a / b, "aim": aim} for n, a, b, aim in rows]},
        indent=1))
    (RESULTS / "perf.md").write_text(
        f"# Speed ratios\n\nbnn: Boston split 0 (455 training points), 1 hidden layer of 50; bayes-lenet: the "
        f"2,000 training images of mnist-mini. An SVI epoch is its steady-state cost (fits of E and 3E epochs, "
        f"the difference over 2E); the fixed cost of a fit is shown against one epoch. {machine}; torch "
        f"{torch.__version__}, pyro {pyro.__version__}.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
