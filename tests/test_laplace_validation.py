"""Held-out data in Laplace: the prior precision chosen by held-out log predictive density, and the MAP's early
stop."""

import math

import pytest
import torch

import zoo
from zoo import ZooError
from zoo.inference.prior_tuning import by_validation
from zoo.inference.validation import EarlyStop, holdout


@pytest.fixture(scope="module")
def data():
    torch.manual_seed(1)
    x = torch.rand(60, 1) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.3 * torch.randn(60)
    return (x[:45], y[:45]), (x[45:], y[45:])


def _fit(train, **options):
    model = zoo.load("bnn", in_features=1, hidden=[8], activation="tanh")
    return zoo.fit(model, train, "laplace", curvature="fisher", predictive="glm", glm_approx="closed",
                   optimizer="lbfgs", num_samples=50, seed=0, **options)


def test_holdout_splits_rows_by_seed():
    x, y = torch.arange(20.0).unsqueeze(-1), torch.arange(20.0)
    (kx, ky), (hx, hy) = holdout((x, y), 0.25, seed=3)
    assert len(hy) == 5 and len(ky) == 15
    assert sorted(torch.cat([ky, hy]).tolist()) == y.tolist()  # every row once
    assert torch.equal(kx[:, 0], ky) and torch.equal(hx[:, 0], hy)  # rows stay together
    assert torch.equal(holdout((x, y), 0.25, seed=3)[1][1], hy)
    assert not torch.equal(holdout((x, y), 0.25, seed=4)[1][1], hy)


def test_grid_finds_the_best_factor_to_a_quarter_decade():
    alpha = torch.full((3,), 2.0)
    best, score = by_validation(lambda a: -(math.log10(float(a[0]) / 2.0) - 0.75) ** 2, alpha)
    assert best == pytest.approx(10**0.75) and score == pytest.approx(0.0, abs=1e-12)


def test_the_score_is_the_posteriors_own_held_out_density(data):
    train, held = data
    tuned = _fit(train, tune_prior="validation", validation=held)
    evidence = _fit(train)
    # the closed-form predictive is deterministic: the grid's score is what evaluate() gives on the same points
    assert tuned.info["validation_log_density"] == pytest.approx(tuned.evaluate(held)["test_ll"], abs=1e-4)
    assert tuned.info["validation_log_density"] >= evidence.evaluate(held)["test_ll"] - 1e-6  # factor 1 is on the grid
    assert torch.equal(tuned.params["laplace.loc"], evidence.params["laplace.loc"])  # the same MAP, another spread


class _Scores:
    """A stand-in for held-out data whose score at the k-th check is ``scores[k]``."""

    def __init__(self, scores):
        self.scores = iter(scores)

    def log_density(self, values):
        return next(self.scores)


class _Flat:
    def unpack(self, theta):
        return {"w": theta}, None


def test_early_stop_keeps_the_best_point_and_waits_patience_checks():
    stop = EarlyStop(_Scores([1.0, 3.0, 2.0, 2.5, 2.9]), _Flat(), patience=3)
    results = [stop.check(torch.tensor([float(k)])) for k in range(5)]
    assert results == [False, False, False, False, True]
    assert stop.point.item() == 1.0 and stop.best == 3.0


def test_patience_stops_an_overfitting_map_early(data):
    train, held = data
    full = _fit(train, tune_prior=False, num_steps=2000)
    early = _fit(train, tune_prior=False, num_steps=2000, patience=2, validation=held)
    assert len(early.loss) < len(full.loss)
    held_ll = lambda post: post.log_likelihood(held).mean().item()  # noqa: E731
    assert held_ll(early) > held_ll(full)


def test_refit_trains_on_every_point_for_the_length_the_early_stop_found(data):
    train, held = data
    early = _fit(train, tune_prior=False, num_steps=2000, patience=2, validation=held)
    refit = _fit(train, tune_prior=False, num_steps=2000, patience=2, validation=held, refit=True)
    checks = len(early.loss)  # L-BFGS records one loss per check of 50 iterations; the best came `patience` before
    assert len(refit.loss) == checks + (checks - 2)
    assert refit.loss[:checks] == early.loss
    assert not torch.equal(refit.params["laplace.loc"], early.params["laplace.loc"])
    assert refit.info["map_loss"] == refit.loss[-1]


def test_held_out_data_is_refused_where_it_is_not_used(data):
    train, held = data
    with pytest.raises(ZooError, match="validation= is used by the laplace backend only"):
        zoo.fit(zoo.load("bnn", in_features=1, hidden=[2]), train, "svi", validation=held, num_steps=2)
    with pytest.raises(ZooError, match="tune_prior='validation' needs held-out data"):
        _fit(train, tune_prior="validation")
    with pytest.raises(ZooError, match="patience needs held-out data"):
        _fit(train, patience=3)
    with pytest.raises(ZooError, match="tune_prior must be one of"):
        _fit(train, tune_prior="marginal")
    with pytest.raises(ZooError, match="set patience too"):
        _fit(train, validation=held, refit=True)
    for fraction in (1.5, 1, 0):
        with pytest.raises(ZooError, match="between 0 and 1"):
            _fit(train, validation=fraction, patience=2)
