import pytest
import torch

from zoo import metrics

PROBS = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
Y = torch.tensor([0, 1, 1, 1])


def test_accuracy_and_brier_by_hand():
    assert metrics.accuracy(PROBS, Y) == 0.75
    # (0.1^2*2 + 0.6^2*2 + 0.3^2*2 + 0.2^2*2) / 4
    assert metrics.brier(PROBS, Y) == pytest.approx((0.02 + 0.72 + 0.18 + 0.08) / 4)


def test_ece_by_hand():
    # confidences 0.9, 0.6, 0.7, 0.8 in bins 9, 6, 7, 8; correct 1, 0, 1, 1
    expected = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert metrics.ece(PROBS, Y, n_bins=10) == pytest.approx(expected)
    # one bin: |mean accuracy - mean confidence|
    assert metrics.ece(PROBS, Y, n_bins=1) == pytest.approx(abs(0.75 - 0.75))


def test_nll_and_rmse():
    assert metrics.nll(PROBS, Y) == pytest.approx(-float(torch.tensor([0.9, 0.4, 0.7, 0.8]).log().mean()))
    assert metrics.rmse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])) == pytest.approx(5**0.5)
