"""Active learning: the acquisition scores by hand, the loop's bookkeeping, and a run that learns."""

import math
from types import SimpleNamespace

import pytest
import torch

import zoo
from zoo import ZooError
from zoo.active import ACQUISITIONS, _acquire, _balanced


def test_scores_by_hand():
    # point 0: two draws that disagree completely; point 1: two draws that agree on a coin flip
    probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5]],
                          [[0.0, 1.0], [0.5, 0.5]]])
    assert torch.allclose(ACQUISITIONS["bald"](probs), torch.tensor([math.log(2), 0.0]), atol=1e-6)
    assert torch.allclose(ACQUISITIONS["max-entropy"](probs), torch.tensor([math.log(2), math.log(2)]), atol=1e-6)
    assert torch.allclose(ACQUISITIONS["mean-std"](probs), torch.tensor([0.5, 0.0]))
    votes = torch.tensor([[[0.9, 0.1]], [[0.8, 0.2]], [[0.3, 0.7]], [[0.6, 0.4]]])  # 3 of 4 draws vote class 0
    assert torch.allclose(ACQUISITIONS["variation-ratios"](votes), torch.tensor([0.25]))


def test_initial_labels_are_balanced():
    y = torch.arange(10).repeat(30)
    picked = _balanced(y, 20, torch.Generator().manual_seed(0))
    assert len(picked.unique()) == 20
    assert torch.equal(torch.bincount(y[picked], minlength=10), torch.full((10,), 2))


def test_bald_takes_the_points_the_draws_disagree_on():
    n = 12
    disagree = torch.tensor([3, 7, 10])
    probs = torch.full((2, n, 2), 0.5)
    probs[0, disagree], probs[1, disagree] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    post = SimpleNamespace(predict=lambda x: SimpleNamespace(draw_probs=probs[:, x[:, 0].long()]))
    pool = zoo.Split(torch.arange(n, dtype=torch.float32).unsqueeze(-1), torch.zeros(n, dtype=torch.long))
    labelled = torch.tensor([0, 1])
    chosen = _acquire(post, pool, labelled, "bald", 3, None, torch.Generator().manual_seed(0))
    assert sorted(chosen.tolist()) == disagree.tolist()
    entropy_first = _acquire(post, pool, labelled, "max-entropy", 3, None, torch.Generator().manual_seed(0))
    assert set(entropy_first.tolist()).isdisjoint(labelled.tolist())


@pytest.fixture(scope="module")
def blobs():
    torch.manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])
    y = torch.arange(3).repeat(100)
    x = centres[y] + 0.8 * torch.randn(300, 2)
    return zoo.Split(x[:240], y[:240]), zoo.Split(x[240:], y[240:])


def test_a_run_labels_new_points_and_learns(blobs, tmp_path):
    pool, test = blobs
    model = zoo.load("bnn-classifier", in_features=2, out_features=3, hidden=[8])
    run = zoo.active.learn(model, pool, "bald", initial=3, step=9, rounds=2, test=test, seed=0, num_steps=200,
                           num_samples=100)
    assert [h["labels"] for h in run.history] == [3, 12, 21]
    assert len(run.acquired) == len(set(run.acquired)) == 21
    assert run.history[-1]["nll"] < run.history[0]["nll"]  # more labels, a surer posterior
    assert run.history[-1]["error_pct"] < 15
    assert run.plot(tmp_path / "curve.png").stat().st_size > 0


def test_bad_input(blobs):
    pool, _ = blobs
    model = zoo.load("bnn-classifier", in_features=2, out_features=3, hidden=[4])
    with pytest.raises(ZooError, match="acquisition='entropy'"):
        zoo.active.learn(model, pool, "entropy")
    with pytest.raises(ZooError, match="the pool holds 240"):
        zoo.active.learn(model, pool, initial=20, step=100, rounds=3)
    with pytest.raises(ZooError, match="class labels"):
        zoo.active.learn(model, zoo.Split(pool.x, pool.y.float()))
    with pytest.raises(ZooError, match="step=0"):
        zoo.active.learn(model, pool, step=0)
    untested = zoo.active.ActiveRun("bald", history=[{"labels": 20}])
    with pytest.raises(ZooError, match="runs learned with test="):
        untested.plot("never.png")
