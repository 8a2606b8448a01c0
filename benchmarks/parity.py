"""Training parity: each network family in the zoo beside the same network written in plain PyTorch.

    python benchmarks/parity.py                                  # every family, seeds 0-2
    python benchmarks/parity.py --families lstm vae --seeds 0    # some
    python benchmarks/parity.py --summary-only

For each family the plain PyTorch network (PyTorch's default initialisation, mean loss, constant-rate
Adam, a fresh permutation per epoch) and the zoo's models train on the same tensors with the same
learning rate, minibatch size and number of steps; the zoo's runs keep every other default of the
model (schedule, prior, initialisation, clipping), since those defaults are what is under test. Each
seed seeds both sides before their networks are built (a VAE's test ELBO after 5 epochs moves by
about 10 nats with its initial weights alone); the table gives the mean and sd over the seeds run.
Goals: the deterministic twin within 1 point of accuracy (1 nat of test ELBO) of plain PyTorch in at
most 1.5x its time; the Bayesian guides within 3 points. Runs append to
benchmarks/results/parity-runs.jsonl; the table is rebuilt from the last run of each row.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import _runs
import torch
import torch.nn.functional as F
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

import zoo
from zoo import metrics

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = RESULTS / "parity-runs.jsonl"
TWIN_POINTS, GUIDE_POINTS, TIME_RATIO = 1.0, 3.0, 1.5
PREDICT_DRAWS = 30


@dataclass
class Family:
    """A dataset, its plain PyTorch network, the zoo's (model, guide) runs and the shared training budget."""

    load: object  # () -> zoo Dataset
    plain: object  # Dataset -> (module, loss(module, x, y), score(module, test) -> dict)
    runs: tuple  # (model name, guide or None for the default, is the deterministic twin)
    epochs: int
    batch_size: int
    lr: float
    metric: str  # "accuracy" (percent, higher is better) or "elbo" (nats per point)


def classifier_score(probs, y) -> dict:
    row = metrics.classification(probs, y)
    return {"accuracy": 100 * row["accuracy"], "nll": row["nll"], "ece": row["ece"]}


def plain_classifier(net_of):
    """A plain classifier family: ``net_of(data)`` builds the module mapping x to logits."""
    def build(data):
        net = net_of(data)

        def loss(module, x, y):
            return F.cross_entropy(module(x), y)

        @torch.no_grad()
        def score(module, test):
            module.eval()
            return classifier_score(torch.cat([module(x).softmax(-1) for x in test.x.split(512)]), test.y)

        return net, loss, score
    return build


def mlp(data):
    return nn.Sequential(nn.Linear(data.train.x.shape[1], 50), nn.ReLU(), nn.Linear(50, 10))


def lenet(data):
    return nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))


class TextLSTM(nn.Module):
    """Embedding 64 -> LSTM 64 -> linear, reading each sequence's state after its last non-padding token."""

    def __init__(self, vocab_size, width=64, classes=2):
        super().__init__()
        self.embed, self.lstm, self.out = nn.Embedding(vocab_size, width), nn.LSTM(width, width, batch_first=True), \
            nn.Linear(width, classes)

    def forward(self, x):
        lengths = (x != 0).sum(-1)
        states, _ = self.lstm(self.embed(x[:, :int(lengths.max())]))
        return self.out(states[torch.arange(len(x)), lengths - 1])


class PlainVAE(nn.Module):
    """Burda et al.'s 784-200-200-50 tanh VAE with a Bernoulli decoder; the ELBO with the analytic KL. With
    ``flows``, vae-iaf's guide: that many IAF steps (Pyro's MADE network conditioned on the encoder's last
    hidden layer, Kingma et al.'s sigmoid-gated update, the order reversed between steps), the KL then by the
    one draw."""

    def __init__(self, features=784, hidden=200, latent=50, flows=0, flow_hidden=100):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(features, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.loc, self.scale = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.flows = nn.ModuleList(ConditionalAutoRegressiveNN(latent, hidden, [flow_hidden, flow_hidden],
                                                               permutation=torch.arange(latent))
                                   for _ in range(flows))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                     nn.Linear(hidden, features))

    def elbo(self, x):
        x = x.flatten(1)
        h = self.trunk(x)
        q = torch.distributions.Normal(self.loc(h), F.softplus(self.scale(h)) + 1e-5)
        prior = torch.distributions.Normal(0.0, 1.0)
        z = q.rsample()
        if not self.flows:
            kl = torch.distributions.kl_divergence(q, prior).sum(-1)
        else:
            log_q = q.log_prob(z).sum(-1)
            for i, made in enumerate(self.flows):
                mean, logit = made(z, context=h)
                gate = torch.sigmoid(logit + 2.0)
                z = gate * z + (1 - gate) * mean
                log_q = log_q - F.logsigmoid(logit + 2.0).sum(-1)
                z = z.flip(-1) if i < len(self.flows) - 1 else z
            kl = log_q - prior.log_prob(z).sum(-1)
        return -F.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(-1) - kl


def plain_vae(flows=0):
    def build(data):
        def loss(module, x, y):
            return -module.elbo(x).mean()

        @torch.no_grad()
        def score(module, test):
            torch.manual_seed(1)
            return {"elbo": float(torch.cat([module.elbo(x) for x in test.x.split(1000)]).mean())}

        return PlainVAE(flows=flows), loss, score

    return build


def mnist(**options):
    return lambda: zoo.datasets.load("mnist", fraction=1 / 6, seed=0, **options)  # 10,000 training digits


FAMILIES = {
    "mlp": Family(mnist(flatten=True), plain_classifier(mlp),
                  (("bnn-classifier", "delta", True), ("bnn-classifier", "mean-field", False),
                   ("bnn-classifier", "mc-dropout", False)), 3, 128, 1e-3, "accuracy"),
    "lenet": Family(mnist(), plain_classifier(lenet),
                    (("lenet", None, True), ("bayes-lenet", "mean-field", False), ("bayes-lenet", "mc-dropout", False)),
                    1, 128, 1e-3, "accuracy"),
    "lstm": Family(lambda: zoo.datasets.load("sst2", max_train=20_000, seed=0),
                   plain_classifier(lambda data: TextLSTM(len(data.vocab))),
                   (("lstm", None, True), ("bayes-lstm", "mean-field", False), ("bayes-lstm", "mc-dropout", False)),
                   1, 64, 3e-3, "accuracy"),
    "vae": Family(mnist(binarize=True), plain_vae(), (("vae", None, True), ("vae-iaf", None, False)), 5, 100, 1e-3,
                  "elbo"),
    # vae-iaf beside the same flow guide in plain PyTorch: whether the zoo's IAF trains as IAF does
    "vae-iaf": Family(mnist(binarize=True), plain_vae(flows=2), (("vae-iaf", None, True),), 5, 100, 1e-3, "elbo"),
}


def train_plain(build, data, epochs, batch_size, lr, seed):
    torch.manual_seed(seed)
    net, loss, score = build(data)
    optim = torch.optim.Adam(net.parameters(), lr=lr)
    x, y = data.train.x, getattr(data.train, "y", None)
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(x)).split(batch_size):
            optim.zero_grad()
            loss(net, x[idx], None if y is None else y[idx]).backward()
            optim.step()
    return score(net, data.test), time.perf_counter() - start


def train_zoo(name, guide, twin, data, family, seed):
    torch.manual_seed(seed)
    model = zoo.load(name, data=data)
    start = time.perf_counter()
    post = zoo.fit(model, data.train, "svi", guide=guide, num_epochs=family.epochs, batch_size=family.batch_size,
                   lr=family.lr, seed=seed, progress=False, num_samples=1 if twin else PREDICT_DRAWS)
    fit_s = time.perf_counter() - start
    if family.metric == "elbo":
        torch.manual_seed(1)
        return {"elbo": post.evaluate(data.test, iwae_samples=1)["elbo"]}, fit_s, post.info.get("elbo_step")
    pred = post.predict(data.test.x)
    return classifier_score(pred.probs, data.test.y), fit_s, post.info.get("elbo_step")


def run(names, seeds):
    torch.set_num_threads(1)
    hardware = f"{platform.machine()}, 1 thread, CPU"
    for family_name, seed in ((f, s) for f in names for s in seeds):
        family = FAMILIES[family_name]
        data = family.load()
        steps = family.epochs * math.ceil(len(data.train) / family.batch_size)
        common = dict(family=family_name, epochs=family.epochs, steps=steps, batch_size=family.batch_size,
                      lr=family.lr, train_size=len(data.train), seed=seed, hardware=hardware, torch=torch.__version__)
        score, fit_s = train_plain(family.plain, data, family.epochs, family.batch_size, family.lr, seed)
        rows = [dict(common, model="plain PyTorch", guide="", twin=False, fit_s=fit_s, **score)]
        _emit(rows[-1])
        for name, guide, twin in family.runs:
            score, fit_s, step = train_zoo(name, guide, twin, data, family, seed)
            _emit(dict(common, model=name, guide=guide or zoo.card(name).default_guide, twin=twin, fit_s=fit_s,
                       elbo_step=step, **score))


def _mean_sd(values):
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5


def _emit(row):
    print(json.dumps(row), flush=True)
    _runs.append(RUNS, row)


def summarise():
    runs = _runs.read(RUNS) if RUNS.exists() else []
    latest = {(r["family"], r["model"], r["guide"], r["seed"]): r for r in runs}
    groups = {}
    for (family, model, guide, _), r in latest.items():
        groups.setdefault((family, model, guide), []).append(r)
    lines = ["# Training parity with plain PyTorch", "",
             "Same tensors, learning rate, minibatch and steps; the plain network has PyTorch's default "
             "initialisation and constant-rate Adam, the zoo's models their own defaults otherwise. Mean (sd) "
             "over the seeds run; fit s is the mean wall time of a fit, the first in its process included. "
             f"Goals: the deterministic twin within {TWIN_POINTS:g} point (or nat of test ELBO) of plain "
             f"PyTorch in at most {TIME_RATIO:g}x its time, the Bayesian guides within {GUIDE_POINTS:g} points.", "",
             "| family | model | guide | data, epochs (steps) | seeds | accuracy % / test ELBO | NLL | ECE | "
             "gap to plain | fit s | time / plain | goal met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, spec in FAMILIES.items():
        plain = groups.get((family, "plain PyTorch", ""))
        for (f, model, guide), rows in groups.items():
            if f != family:
                continue
            value, sd = _mean_sd([r[spec.metric] for r in rows])
            fit_s = _mean_sd([r["fit_s"] for r in rows])[0]
            gap = value - _mean_sd([r[spec.metric] for r in plain])[0] if plain else float("nan")
            ratio = fit_s / _mean_sd([r["fit_s"] for r in plain])[0] if plain else float("nan")
            if model == "plain PyTorch":
                met = ""
            elif rows[0]["twin"]:
                met = "yes" if gap >= -TWIN_POINTS and ratio <= TIME_RATIO else "no"
            else:
                met = "yes" if gap >= -GUIDE_POINTS else "no"
            nll, ece = (f"{_mean_sd([r[k] for r in rows])[0]:.3f}" if "nll" in rows[0] else "" for k in ("nll", "ece"))
            r = rows[0]
            lines.append(f"| {family} | {model} | {guide} | {r['train_size']:,}, {r['epochs']} ({r['steps']:,}) | "
                         f"{len(rows)} | {value:.2f} ({sd:.2f}) | {nll} | {ece} | {gap:+.2f} | {fit_s:.1f} | "
                         f"{ratio:.2f} | {met} |")
    first = next(iter(latest.values()), None)
    if first:
        lines += ["", f"Hardware: {first['hardware']}; torch {first['torch']}. Data: mlp and lenet, 10,000 MNIST "
                  "training digits (grey levels), tested on the 10,000 test digits; lstm, 20,000 SST-2 training "
                  "phrases, tested on the 872 dev sentences; vae and vae-iaf, the same 10,000 digits binarised (fixed "
                  "stochastic binarisation), test ELBO per digit in nats (one sample).", ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "parity.md").write_text("\n".join(lines))
    (RESULTS / "parity.json").write_text(json.dumps(list(latest.values()), indent=1))
    print("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--summary-only", action="store_true")
    args = parser.parse_args()
    if not args.summary_only:
        run(args.families, args.seeds)
    summarise()


if __name__ == "__main__":
    main()
