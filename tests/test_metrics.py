import math

import pytest
import torch

from zoo import metrics
from zoo._errors import ZooError

PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
Y = torch.tensor([0, 1, 1, 1])


def test_accuracy_and_brier_by_hand():
    assert metrics.accuracy(PROBS, Y) == 0.75
    # (0.1^2*2 + 0.6^2*2 + 0.3^2*2 + 0.2^2*2) / 4
    assert metrics.brier(PROBS, Y) == pytest.approx((0.02 + 0.72 + 0.18 + 0.08) / 4)


def test_ece_by_hand():
    # confidences 0.9, 0.6, 0.7, 0.8 each alone in a bin (bins are (lo, hi]); correct 1, 0, 1, 1
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert metrics.ece(PROBS, Y, n_bins=10) == pytest.approx(expected)
    # one bin: |mean accuracy - mean confidence|
    assert metrics.ece(PROBS, Y, n_bins=1) == pytest.approx(abs(0.75 - 0.75))


def test_nll_and_rmse():
    assert metrics.nll(PROBS, Y) == pytest.approx(-float(torch.tensor([0.9, 0.4, 0.7, 0.8]).log().mean()))
    assert metrics.rmse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])) == pytest.approx(5**0.5)


# --- uncertainty decomposition -------------------------------------------------------------------------------


def test_entropy_of_uniform_is_log_classes():
    uniform = torch.full((3, 4), 0.25)
    assert torch.allclose(metrics.predictive_entropy(uniform), torch.full((3,), math.log(4)))
    draws = uniform.expand(5, 3, 4)
    assert torch.allclose(metrics.predictive_entropy(draws), torch.full((3,), math.log(4)))
    assert torch.allclose(metrics.expected_entropy(draws), torch.full((3,), math.log(4)))
    assert torch.allclose(metrics.mutual_information(draws), torch.zeros(3), atol=1e-6)


def test_disagreeing_confident_draws_are_all_epistemic():
    probs = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # 2 draws, 1 point, 2 classes
    assert metrics.predictive_entropy(probs).tolist() == pytest.approx([math.log(2)])
    assert metrics.expected_entropy(probs).tolist() == [0.0]
    assert metrics.mutual_information(probs).tolist() == pytest.approx([math.log(2)])


def test_identical_draws_have_zero_mutual_information():
    draw = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    probs = torch.stack([draw, draw, draw])
    assert torch.allclose(metrics.mutual_information(probs), torch.zeros(2), atol=1e-6)
    assert torch.allclose(metrics.predictive_entropy(probs), metrics.expected_entropy(probs))


def test_two_draw_three_class_by_hand():
    # point 0: draws [.7, .2, .1] and [.1, .2, .7]; mean [.4, .2, .4]
    # point 1: draws [.5, .5, 0] and [.5, 0, .5]; mean [.5, .25, .25] (exact zeros)
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]],
                          [[0.1, 0.2, 0.7], [0.5, 0.0, 0.5]]], dtype=torch.float64)
    h_mean0 = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))  # 1.05492
    h_draw0 = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))  # 0.80182
    h_mean1, h_draw1 = 1.5 * math.log(2), math.log(2)
    assert metrics.predictive_entropy(probs).tolist() == pytest.approx([h_mean0, h_mean1])
    assert metrics.expected_entropy(probs).tolist() == pytest.approx([h_draw0, h_draw1])
    assert metrics.mutual_information(probs).tolist() == pytest.approx([h_mean0 - h_draw0, 0.5 * math.log(2)])
    assert metrics.mutual_information(probs)[0] == pytest.approx(0.253101, abs=1e-6)


def test_exact_zero_probabilities_give_finite_values():
    probs = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]])
    for fn in (metrics.predictive_entropy, metrics.expected_entropy, metrics.mutual_information):
        out = fn(probs)
        assert torch.isfinite(out).all()
        assert out.tolist() == [0.0]
    assert metrics.predictive_entropy(probs[0]).tolist() == [0.0]


# --- AUROC ----------------------------------------------------------------------------------------------------


def test_auroc_extremes_and_ties():
    low, high = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([3.0, 4.0])
    assert metrics.auroc(low, high) == 1.0
    assert metrics.auroc(high, low) == 0.0
    assert metrics.auroc(torch.ones(3), torch.ones(4)) == 0.5


def test_auroc_by_hand_with_ties():
    # out 0.4 beats 0.1 and 0.35, ties 0.4, loses to 0.8: 2.5; out 0.9 beats all four: 4 -> 6.5 / 8
    scores_in, scores_out = torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.4, 0.9])
    assert metrics.auroc(scores_in, scores_out) == pytest.approx(6.5 / 8)


def test_auroc_matches_pairwise_count():
    gen = torch.Generator().manual_seed(0)
    scores_in = torch.randint(0, 6, (40,), generator=gen).float()
    scores_out = torch.randint(2, 8, (30,), generator=gen).float()
    diff = scores_out[:, None] - scores_in[None, :]
    pairwise = float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())
    assert metrics.auroc(scores_in, scores_out) == pytest.approx(pairwise)


def test_ood_auroc_separates_by_both_scores():
    confident = torch.tensor([[0.98, 0.01, 0.01], [0.01, 0.97, 0.02]]).expand(4, 2, 3)
    # out-of-distribution: draws disagree confidently, so both entropy and mutual information are high
    disagree = torch.tensor([[[0.9, 0.05, 0.05]] * 3, [[0.05, 0.9, 0.05]] * 3, [[0.05, 0.05, 0.9]] * 3,
                             [[0.9, 0.05, 0.05]] * 3])
    assert metrics.ood_auroc(confident, disagree) == 1.0
    assert metrics.ood_auroc(confident, disagree, score="mutual_information") == 1.0
    assert metrics.ood_auroc(disagree, confident, score="entropy") == 0.0


# --- reliability and ECE --------------------------------------------------------------------------------------


REL_PROBS = torch.tensor([
    [0.24, 0.19, 0.19, 0.19, 0.19],  # conf .24 -> bin 0, predicts 0, y 0: right
    [0.70, 0.10, 0.10, 0.10, 0.00],  # conf .70 -> bin 2, right
    [0.10, 0.60, 0.10, 0.10, 0.10],  # conf .60 -> bin 2, predicts 1, y 0: wrong
    [0.00, 0.00, 0.90, 0.10, 0.00],  # conf .90 -> bin 3, right
    [0.00, 0.00, 0.00, 0.00, 1.00],  # conf 1.0 -> bin 3 (last), predicts 4, y 3: wrong
])
REL_Y = torch.tensor([0, 0, 0, 2, 3])


def test_reliability_by_hand():
    bins = metrics.reliability(REL_PROBS, REL_Y, n_bins=4)
    assert bins["count"].tolist() == [1, 0, 2, 2]
    assert int(bins["count"].sum()) == 5
    assert bins["edges"].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    conf, acc = bins["confidence"], bins["accuracy"]
    assert math.isnan(conf[1]) and math.isnan(acc[1])
    assert conf[[0, 2, 3]].tolist() == pytest.approx([0.24, 0.65, 0.95])
    assert acc[[0, 2, 3]].tolist() == pytest.approx([1.0, 0.5, 0.5])
    # 1/5 * |1 - .24| + 2/5 * |.5 - .65| + 2/5 * |.5 - .95|
    assert metrics.ece(REL_PROBS, REL_Y, n_bins=4) == pytest.approx(0.152 + 0.06 + 0.18)


def test_reliability_bin_edges():
    low = torch.full((1, 20), 0.05)  # confidence 0.05 with 10 bins: bin 0
    assert metrics.reliability(low, torch.tensor([0]))["count"].tolist() == [1] + [0] * 9
    sure = torch.tensor([[1.0, 0.0]])  # confidence exactly 1: last bin
    assert metrics.reliability(sure, torch.tensor([0]))["count"].tolist() == [0] * 9 + [1]


def test_ece_is_the_reliability_weighted_gap():
    gen = torch.Generator().manual_seed(1)
    probs = torch.randn(200, 5, generator=gen).mul(2).softmax(-1)
    y = torch.randint(0, 5, (200,), generator=gen)
    for n_bins in (1, 7, 15):
        bins = metrics.reliability(probs, y, n_bins)
        assert int(bins["count"].sum()) == 200
        full = bins["count"] > 0
        expected = float((bins["count"][full] / 200 * (bins["accuracy"][full] - bins["confidence"][full]).abs()).sum())
        assert metrics.ece(probs, y, n_bins) == pytest.approx(expected)
        # the sum-of-gaps form the earlier ece used
        confidence, predicted = probs.max(-1)
        index = torch.clamp((confidence * n_bins).ceil().long() - 1, 0, n_bins - 1)
        gap = torch.zeros(n_bins).index_add_(0, index, (predicted == y).float() - confidence)
        assert metrics.ece(probs, y, n_bins) == pytest.approx(float(gap.abs().sum() / 200), abs=1e-6)


# --- bad inputs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.predictive_entropy(torch.tensor([0.5, 0.5])), "shaped"),
    (lambda: metrics.expected_entropy(torch.full((2, 2), 0.5)), "draws, points, classes"),
    (lambda: metrics.mutual_information(torch.full((2, 2), 0.5)), "draws, points, classes"),
    (lambda: metrics.predictive_entropy(torch.tensor([[0.5, 0.6]])), "sum to 1"),
    (lambda: metrics.expected_entropy(torch.tensor([[[0.5, 0.4]]])), "sum to 1"),
    (lambda: metrics.predictive_entropy(torch.tensor([[1.5, -0.5]])), r"\[0, 1\]"),
    (lambda: metrics.predictive_entropy(torch.tensor([[float("nan"), 1.0]])), "NaN"),
    (lambda: metrics.reliability(PROBS, torch.tensor([0, 1, 2, 1])), r"\[0, 1\]"),
    (lambda: metrics.reliability(PROBS, torch.tensor([0, -1, 1, 1])), "class labels"),
    (lambda: metrics.reliability(PROBS, torch.tensor([0, 1])), "one label per point"),
    (lambda: metrics.ece(PROBS, Y, n_bins=0), "n_bins"),
    (lambda: metrics.ece(PROBS, Y, n_bins=2.5), "n_bins"),
    (lambda: metrics.reliability(PROBS, Y, n_bins=True), "n_bins"),
    (lambda: metrics.reliability(PROBS[None], Y), "points, classes"),
    (lambda: metrics.auroc(torch.tensor([]), torch.tensor([1.0])), "at least one"),
    (lambda: metrics.auroc(torch.tensor([float("nan")]), torch.tensor([1.0])), "finite"),
    (lambda: metrics.ood_auroc(PROBS[None], PROBS[None], score="variance"), "unknown score"),
    (lambda: metrics.ood_auroc(PROBS, PROBS), "probs_in"),
])
def test_bad_inputs_raise_zoo_error(call, match):
    with pytest.raises(ZooError, match=match):
        call()
