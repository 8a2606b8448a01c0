"""Active learning: label the pool points the posterior is most uncertain about, refit, repeat (Gal, Islam &
Ghahramani 2017, Deep Bayesian Active Learning with Image Data).

>>> import torch, zoo
>>> x = torch.randn(60, 2); pool = zoo.Split(x, (x[:, 0] > 0).long())
>>> model = zoo.load("bnn-classifier", in_features=2, out_features=2, hidden=[8])
>>> run = zoo.active.learn(model, pool, "bald", initial=6, step=4, rounds=2, seed=0, num_steps=100)
>>> [r["labels"] for r in run.history]
[6, 10, 14]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import metrics
from ._data import Split
from ._errors import ZooError
from .inference import fit


def _mode_share(probs: torch.Tensor) -> torch.Tensor:
    """The share of draws whose top class is the most frequent top class, per point (variation ratio's)."""
    votes = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).sum(0)
    return votes.max(-1).values / probs.shape[0]


# acquisition name -> score of each pool point from draw_probs (draws, points, classes); higher is acquired first
ACQUISITIONS: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "bald": metrics.mutual_information,
    "max-entropy": metrics.predictive_entropy,
    "variation-ratios": lambda probs: 1 - _mode_share(probs),
    "mean-std": lambda probs: probs.std(0, unbiased=False).mean(-1),
    "random": None,
}


@dataclass
class ActiveRun:
    """What :func:`learn` did: ``history`` (one row per fit: labels used, test metrics when a test set was
    given), ``acquired`` (the pool indices labelled, in order) and the last fit's ``posterior``."""

    acquisition: str
    history: list[dict] = field(default_factory=list)
    acquired: list[int] = field(default_factory=list)
    posterior: object = None

    def plot(self, path, others: list[ActiveRun] = (), metric: str = "error_pct"):
        """Test ``metric`` against the number of labels, this run beside ``others``; returns the file's path."""
        from .plots import learning_curves

        runs = [self, *others]
        if any(metric not in h for r in runs for h in r.history):
            raise ZooError(f"plot: {metric!r} is not in every run's history; runs learned with test= hold "
                           "'error_pct', 'nll' and 'ece'")
        return learning_curves({r.acquisition: ([h["labels"] for h in r.history], [h[metric] for h in r.history])
                                for r in runs}, path, metric)


def learn(model, pool: Split, acquisition: str = "bald", *, initial: int = 20, step: int = 10, rounds: int = 10,
          test: Split | None = None, candidates: int | None = None, seed: int = 0, backend: str = "svi",
          **fit_options) -> ActiveRun:
    """Active learning of a classifier over ``pool`` (a Split whose labels the oracle reveals on request).

    Starts from ``initial`` labels balanced over the classes (random when that is not possible), then for each of
    ``rounds`` rounds fits ``model`` afresh to the labels so far (``zoo.fit(model, labelled, backend,
    **fit_options)``), scores the unlabelled points (or a random ``candidates`` of them) by ``acquisition``, and
    labels the ``step`` best. Acquisitions: ``"bald"`` (mutual information between the label and the weights),
    ``"max-entropy"`` (predictive entropy), ``"variation-ratios"`` (one less the share of draws voting for the
    most voted class), ``"mean-std"`` (mean over classes of the probabilities' spread over draws), ``"random"``.
    With ``test``, each fit is scored there (``error_pct``, ``nll``, ``ece``).
    """
    if acquisition not in ACQUISITIONS:
        raise ZooError(f"acquisition={acquisition!r}: choose one of {', '.join(map(repr, ACQUISITIONS))}")
    if not isinstance(pool, Split):
        raise ZooError(f"pool must be a Split of inputs and labels (zoo.Split(x, y)); got {type(pool).__name__}")
    for name, value in (("initial", initial), ("step", step), ("rounds", rounds)):
        if not isinstance(value, int) or value < (0 if name == "rounds" else 1):
            raise ZooError(f"{name}={value!r}: expected a positive whole number")
    if pool.y.dtype.is_floating_point:
        raise ZooError("active learning here acquires labels for a classifier: pool.y must hold class labels "
                       f"(integers), not {pool.y.dtype}")
    if initial + rounds * step > len(pool):
        raise ZooError(f"initial + rounds * step = {initial + rounds * step} labels, but the pool holds {len(pool)} "
                       "points; lower rounds or step")
    generator = torch.Generator().manual_seed(seed)
    labelled = _balanced(pool.y, initial, generator)
    run = ActiveRun(acquisition, acquired=labelled.tolist())
    for round_ in range(rounds + 1):
        post = fit(model, Split(pool.x[labelled], pool.y[labelled]), backend, seed=seed + round_, progress=False,
                   **fit_options)
        row = {"labels": len(labelled)}
        if test is not None:
            row.update(_score(post, test))
        run.history.append(row)
        run.posterior = post
        if round_ == rounds:
            break
        chosen = _acquire(post, pool, labelled, acquisition, step, candidates, generator)
        labelled = torch.cat([labelled, chosen])
        run.acquired.extend(chosen.tolist())
    return run


def _balanced(y: torch.Tensor, count: int, generator) -> torch.Tensor:
    """``count`` random indices, the same number from each class where there are enough."""
    classes = y.unique()
    if count % len(classes) == 0 and all(int((y == c).sum()) >= count // len(classes) for c in classes):
        per_class = count // len(classes)
        picks = [torch.nonzero(y == c).squeeze(-1) for c in classes]
        return torch.cat([p[torch.randperm(len(p), generator=generator)[:per_class]] for p in picks])
    return torch.randperm(len(y), generator=generator)[:count]


def _acquire(post, pool: Split, labelled, acquisition: str, step: int, candidates, generator) -> torch.Tensor:
    """The ``step`` unlabelled pool indices with the highest acquisition score."""
    free = torch.ones(len(pool), dtype=torch.bool)
    free[labelled] = False
    unlabelled = torch.nonzero(free).squeeze(-1)
    unlabelled = unlabelled[torch.randperm(len(unlabelled), generator=generator)]
    if candidates is not None:
        unlabelled = unlabelled[:candidates]
    score = ACQUISITIONS[acquisition]
    if score is None:
        return unlabelled[:step]
    probs = post.predict(pool.x[unlabelled]).draw_probs
    if probs is None:
        raise ZooError("active learning needs a classifier's class probabilities; this model predicts none")
    return unlabelled[score(probs).topk(step).indices]


def _score(post, test: Split) -> dict[str, float]:
    probs = post.predict(test.x).probs
    row = metrics.classification(probs, test.y)
    return {"error_pct": 100 * (1 - row["accuracy"]), "nll": row["nll"], "ece": row["ece"]}
