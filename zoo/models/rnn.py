"""Bayesian LSTMs: ``bayes-lstm`` (text classification), ``bayes-lstm-regressor`` (one-step-ahead
forecasting) and the deterministic twin ``lstm``."""

from __future__ import annotations

from dataclasses import replace

import pyro
import torch

from .. import _noise as noise
from .._data import training_arrays
from .._errors import ZooError
from .._model import Defaults, Display, ZooModel
from .._registry import register_model
from .cnn import check_labels
from .layers import dense, observe, weight
from .likelihoods import RegressionLikelihood
from .network_model import NetworkModel
from .weight_guides import (
    LAST_LAYER_LAPLACE,
    WeightSite,
    init_at,
    mc_dropout_guide,
    mean_field_guide,
    with_dropout,
)

PAPERS = ("Hochreiter & Schmidhuber 1997; Gal & Ghahramani 2016, A Theoretically Grounded Application "
          "of Dropout in Recurrent Neural Networks; Fortunato et al. 2017, Bayesian Recurrent Neural Networks")


class BayesianLSTM:
    """(embedding ->) LSTM -> linear with N(0, prior_scale^2) priors on every weight.

    Sites: ``embed`` (vocab, embed_dim, classification only; a point estimate under every guide),
    ``w_ih`` (4H, in), ``w_hh`` (4H, H), ``b_lstm`` (4H), ``w_out`` (out, H), ``b_out`` (out).
    The last hidden state of each sequence (its last non-padding token) feeds the output layer.
    Classification: ``y ~ Categorical(logits)``; regression: ``likelihood`` (:mod:`zoo.models.likelihoods`).
    """

    def __init__(self, task, in_features, hidden, out_features, prior_scale, vocab_size=None,
                 likelihood: RegressionLikelihood | None = None):
        self.task = task
        self.prior_scale = prior_scale
        self.likelihood = likelihood
        self.sites = []
        # PyTorch's starting scales: N(0, 1) embeddings, weights of variance 1 / (3 fan_in) (U(+-1/sqrt(fan_in))).
        # He's gain 2, meant for ReLU nets, saturated a third of the gates at the start and cost 3 to 16 points
        # of SST-2 accuracy (benchmarks/parity.py)
        if vocab_size is not None:
            self.sites.append(WeightSite("embed", (vocab_size, in_features), 1, point=True, gain=1.0))
        gate, gain = 4 * hidden, 1 / 3
        self.sites += [
            WeightSite("w_ih", (gate, in_features), in_features, gain=gain),
            WeightSite("w_hh", (gate, hidden), hidden, gain=gain), WeightSite("b_lstm", (gate,), hidden),
            WeightSite("w_out", (out_features, hidden), hidden, gain=gain),
            WeightSite("b_out", (out_features,), hidden),
        ]

    def __call__(self, x, y=None):
        w = {s.name: weight(s.name, s.shape, self.prior_scale, x.device) for s in self.sites}
        scales = self.likelihood.sample_noise(x.device) if self.likelihood else None
        with pyro.plate("data", x.shape[0]) as idx:
            x = x[idx]
            if self.task == "classification":
                lengths = (x != 0).sum(-1)
                x = x[:, :int(lengths.max())]  # no steps past the batch's longest sequence
                inputs = w["embed"][..., x, :]
            else:
                lengths, inputs = torch.full(x.shape[:1], x.shape[1], device=x.device), x
            out = dense(lstm(inputs, lengths, w["w_ih"], w["w_hh"], w["b_lstm"]), w["w_out"], w["b_out"])
            y = None if y is None else y[idx]
            return self.likelihood.observe(out, y, scales) if self.likelihood else observe(out, y)


def lstm(inputs, lengths, w_ih, w_hh, b):
    """Run an LSTM over ``inputs`` (*draws, n, L, in); the hidden state after each sequence's last step.

    Every weight is used with ``tied=True``: under per-example noise each sequence keeps one weight
    sample (and one dropout mask) for all its time steps.
    """
    hidden = w_hh.shape[-1]
    if inputs.dim() == 3 and w_hh.dim() == 2 and all(noise.lookup(w) is None for w in (w_ih, w_hh, b)):
        # one network, no per-example noise: PyTorch's fused LSTM, about 4x the Python loop's speed; each
        # sequence's state is read after its last token, which the padding after it cannot change
        zeros = inputs.new_zeros(1, inputs.shape[0], hidden)
        states, _, _ = torch.lstm(inputs, (zeros, zeros), [w_ih, w_hh, b, torch.zeros_like(b)], True, 1, 0.0,
                                  False, False, True)
        return states[torch.arange(inputs.shape[0], device=inputs.device), lengths - 1]
    batch = torch.broadcast_shapes(inputs.shape[:-3], w_hh.shape[:-2])
    h = inputs.new_zeros(*batch, inputs.shape[-3], hidden)
    c = h
    for t in range(inputs.shape[-2]):
        gates = dense(inputs[..., t, :], w_ih, tied=True) + dense(h, w_hh, b, tied=True)
        i, f, g, o = gates.chunk(4, -1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        alive = (t < lengths).unsqueeze(-1)
        h, c = torch.where(alive, h_next, h), torch.where(alive, c_next, c)
    return h


class TextLSTMModel(NetworkModel):
    """An LSTM sentence classifier: x checked as padded token ids of its vocabulary, y against its classes."""

    kind = "LSTM"

    def __init__(self, name: str, net, vocab_size: int, num_classes: int, **kwargs):
        super().__init__(net, **kwargs)
        self.label, self.vocab_size, self.num_classes = name, vocab_size, num_classes

    def validate(self, args):
        name, vocab_size = self.label, self.vocab_size
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ZooError(f"{name}: x must be integer token ids shaped (sequences, length), padded with 0 "
                           f"(see zoo.datasets.text.pad); got {shape}")
        if x.numel() and (x.min() < 0 or x.max() >= vocab_size):
            raise ZooError(f"{name}: token ids must lie in [0, {vocab_size - 1}] (the vocabulary the model was "
                           f"built with), got range [{int(x.min())}, {int(x.max())}]")
        empty = torch.nonzero((x != 0).sum(-1) == 0).flatten()
        if len(empty):
            raise ZooError(f"{name}: sequence rows {empty[:5].tolist()} are empty (all padding); drop them")
        if len(args) > 1 and args[1] is not None:
            check_labels(name, args[1], self.num_classes)


class SeriesLSTMModel(NetworkModel):
    """An LSTM forecaster: x checked as float windows of its features, y as one float target per window."""

    kind = "LSTM"

    def __init__(self, name: str, net, in_features: int, **kwargs):
        super().__init__(net, **kwargs)
        self.label, self.in_features = name, in_features

    def validate(self, args):
        name, in_features = self.label, self.in_features
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != in_features or x.shape[1] == 0:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ZooError(f"{name}: x must be float windows shaped (windows, length >= 1, {in_features}); "
                           f"got {shape}")
        y = args[1] if len(args) > 1 else None
        if y is not None and (y.dim() != 1 or not y.is_floating_point()):
            raise ZooError(f"{name}: y must be a float vector, one target per window; got {tuple(y.shape)}")


def _contract(net, config, dropout, fit_defaults) -> dict:
    """What every LSTM model shares: its guides, start, output layer, defaults and display."""
    extra = net.likelihood.noise_sites if net.likelihood else {}

    def mean_field(zm, init_scale: float = 1e-3):
        return mean_field_guide("mean_field", net.sites, init_scale, extra)

    def variational_dropout(zm, p: float = dropout):
        # a series' inputs are the signal itself (not an embedding): dropping them blinds whole windows
        rates = {"w_ih": p if net.task == "classification" else 0.0, "w_hh": p, "w_out": p}
        return mc_dropout_guide("mc_dropout", with_dropout(net.sites, rates), extra)

    starts = {name: start for name, (start, _) in extra.items()}
    return dict(guides={"mean-field": mean_field, "mc-dropout": variational_dropout}, config=config,
                init_loc_fn=init_at(net.sites, starts), last_layer=["w_out", "b_out"], vectorized=True,
                defaults=Defaults(fit=fit_defaults, num_samples=100, predict_batch=256),
                display=Display(summary_sites=list(extra)))


# a constant rate, as plain PyTorch trains it: decayed to a tenth (svi's default), one epoch of 20,000 SST-2
# phrases reached 58.4 % dev accuracy (lstm) against 70.3 % constant and 70.6 % for the plain PyTorch LSTM
TEXT_DEFAULTS = {"svi": {"batch_size": 64, "lr": 3e-3, "lr_decay": 1.0, "num_epochs": 3},
                 "laplace": LAST_LAYER_LAPLACE}


def _text_model(name, data, vocab_size, embed_dim, hidden, num_classes, prior_scale, dropout):
    if data is not None:
        vocab = getattr(data, "vocab", None)
        x, y = training_arrays(data)
        vocab_size = len(vocab) if vocab is not None else int(x.max()) + 1
        num_classes = num_classes or int(y.max()) + 1
    if vocab_size is None:
        raise ZooError(f"{name}: give data= (a text dataset with its vocab) or vocab_size=")
    num_classes = num_classes or 2
    net = BayesianLSTM("classification", embed_dim, hidden, num_classes, prior_scale, vocab_size=vocab_size)
    config = dict(vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden, num_classes=num_classes,
                  prior_scale=prior_scale, dropout=dropout)
    return TextLSTMModel(name, net, vocab_size, num_classes, **_contract(net, config, dropout, TEXT_DEFAULTS))


@register_model("bayes-lstm", task="classification", family="bayesian-rnn",
                likelihood="Categorical(logits=W h_T + b), h_T the LSTM state after the last token",
                default_guide="mc-dropout", guides=("mc-dropout", "mean-field", "delta"), paper=PAPERS,
                notes="mc-dropout is variational dropout tied across time (one mask per sequence on input, "
                      "hidden and output units); mean-field uses flipout, also tied across time. "
                      "The embedding is a MAP point estimate under every guide. nuts is refused above 5,000 "
                      "weights; tiny configs may use it.")
def bayes_lstm(*, data=None, vocab_size: int | None = None, embed_dim: int = 64, hidden: int = 64,
               num_classes: int | None = None, prior_scale: float = 1.0, dropout: float = 0.25) -> ZooModel:
    """Bayesian LSTM sentence classifier over token ids (``zoo.datasets.load("sst2")``)."""
    return _text_model("bayes-lstm", data, vocab_size, embed_dim, hidden, num_classes, prior_scale, dropout)


@register_model("lstm", task="classification", family="bayesian-rnn",
                likelihood="Categorical(logits=W h_T + b)", default_guide="delta", guides=("delta",),
                paper=PAPERS, notes="Deterministic twin of bayes-lstm: the MAP point estimate, one draw.")
def lstm_classifier(*, data=None, vocab_size: int | None = None, embed_dim: int = 64, hidden: int = 64,
                    num_classes: int | None = None, prior_scale: float = 1.0) -> ZooModel:
    """LSTM sentence classifier trained to a point estimate: the baseline for bayes-lstm."""
    zm = _text_model("lstm", data, vocab_size, embed_dim, hidden, num_classes, prior_scale, 0.0)
    zm.defaults = replace(zm.defaults, num_samples=1)
    return zm


@register_model("bayes-lstm-regressor", task="regression", family="bayesian-rnn",
                likelihood="Normal(W h_T + b, precision^-1/2), precision ~ Gamma(1, 0.01)",
                default_guide="mc-dropout", guides=("mc-dropout", "mean-field", "delta"), paper=PAPERS,
                notes="One-step-ahead forecasting: x holds windows (n, length, features), y the next value "
                      "(see zoo.datasets.series.windows).")
def bayes_lstm_regressor(*, data=None, in_features: int | None = None, hidden: int = 32,
                         prior_scale: float = 1.0, dropout: float = 0.1, likelihood: str = "normal") -> ZooModel:
    """Bayesian LSTM forecaster: the next value of a series from the window before it.

    ``likelihood``: ``"normal"``, ``"heteroscedastic"`` or ``"student-t"`` (:mod:`zoo.models.likelihoods`).
    """
    if data is not None:
        in_features = int(training_arrays(data)[0].shape[-1])
    if in_features is None:
        raise ZooError("bayes-lstm-regressor: give data= (windows from zoo.datasets.series.windows) or in_features=")
    law = RegressionLikelihood(likelihood)
    net = BayesianLSTM("regression", in_features, hidden, law.outputs, prior_scale, likelihood=law)
    config = dict(in_features=in_features, hidden=hidden, prior_scale=prior_scale, dropout=dropout,
                  likelihood=likelihood)
    defaults = {"svi": {"batch_size": 64, "lr": 3e-3, "num_epochs": 20},
                "laplace": LAST_LAYER_LAPLACE}
    return SeriesLSTMModel("bayes-lstm-regressor", net, in_features, **_contract(net, config, dropout, defaults))
