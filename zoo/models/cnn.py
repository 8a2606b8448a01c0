"""Bayesian LeNet-5 for 28x28 images: ``bayes-lenet`` and its deterministic twin ``lenet``."""

from __future__ import annotations

from dataclasses import replace

import pyro
import torch

from .._data import training_arrays
from .._errors import ZooError
from .._model import Defaults, ZooModel
from .._registry import register_model
from .layers import conv2d, dense, max_pool, observe, weight
from .network_model import NetworkModel
from .weight_guides import (
    LAST_LAYER_LAPLACE,
    WeightSite,
    init_at,
    mc_dropout_guide,
    mean_field_guide,
    with_dropout,
)

PAPERS = ("LeCun et al. 1998; Gal & Ghahramani 2015, Bayesian CNNs with Bernoulli Approximate "
          "Variational Inference; Blundell et al. 2015; Wen et al. 2018, Flipout")
KERNEL = 5
# a constant rate, as plain PyTorch trains it: decayed to a tenth (svi's default), lenet after one epoch of
# 10,000 digits (Adam 1e-3, batch 128) reached 93.8 % test accuracy against 96.1 % constant (benchmarks/parity.py)
CONSTANT_RATE_SVI = {"batch_size": 128, "lr": 1e-3, "lr_decay": 1.0, "num_epochs": 5}


class BayesianLeNet:
    """conv(5x5)-relu-pool-conv(5x5)-relu-pool-fc-relu-fc with N(0, prior_scale^2) on every weight.

    Sites ``w0, b0`` and ``w1, b1`` are the convolutions, ``w2, b2`` the hidden dense layer and
    ``w3, b3`` the output layer; ``logits`` is deterministic, ``y ~ Categorical(logits)``.
    """

    def __init__(self, image_shape, channels, hidden, num_classes, prior_scale):
        c, height, width = image_shape
        c1, c2 = channels
        side = ((height - KERNEL + 1) // 2 - KERNEL + 1) // 2, ((width - KERNEL + 1) // 2 - KERNEL + 1) // 2
        if min(side) < 1:
            raise ZooError(f"bayes-lenet: images of {height}x{width} are too small for two 5x5 conv + pool stages")
        flat = c2 * side[0] * side[1]
        self.image_shape = tuple(image_shape)
        self.prior_scale = prior_scale
        self.sites = [
            WeightSite("w0", (c1, c, KERNEL, KERNEL), c * KERNEL**2), WeightSite("b0", (c1,), c * KERNEL**2),
            WeightSite("w1", (c2, c1, KERNEL, KERNEL), c1 * KERNEL**2), WeightSite("b1", (c2,), c1 * KERNEL**2),
            WeightSite("w2", (hidden, flat), flat), WeightSite("b2", (hidden,), flat),
            WeightSite("w3", (num_classes, hidden), hidden), WeightSite("b3", (num_classes,), hidden),
        ]

    def __call__(self, x, y=None):
        w = {s.name: weight(s.name, s.shape, self.prior_scale, x.device) for s in self.sites}
        with pyro.plate("data", x.shape[0]) as idx:
            h = max_pool(torch.relu(conv2d(x[idx], w["w0"], w["b0"])))
            h = max_pool(torch.relu(conv2d(h, w["w1"], w["b1"])))
            h = torch.relu(dense(h.flatten(-3), w["w2"], w["b2"]))
            return observe(dense(h, w["w3"], w["b3"]), None if y is None else y[idx])


class LeNetModel(NetworkModel):
    """A LeNet: x checked against the image shape it was built for and [0, 1] pixels, y against its classes."""

    kind = "LeNet"

    def __init__(self, name: str, net: BayesianLeNet, num_classes: int, **kwargs):
        super().__init__(net, **kwargs)
        self.label, self.num_classes = name, num_classes

    def validate(self, args):
        name, image_shape = self.label, self.model.image_shape
        if not args or not isinstance(args[0], torch.Tensor):
            raise ZooError(f"{name}: expected data (x, y) with x a tensor of images (points, C, H, W)")
        x = args[0]
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(image_shape):
            raise ZooError(f"{name}: x must have shape (points, {', '.join(map(str, image_shape))}) as the "
                           f"network was built for; got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ZooError(f"{name}: images must be floating point in [0, 1], got {x.dtype}")
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise ZooError(f"{name}: pixel values must lie in [0, 1], got range [{float(x.min()):.3g}, "
                           f"{float(x.max()):.3g}]; divide 8-bit images by 255")
        y = args[1] if len(args) > 1 else None
        if y is not None:
            check_labels(name, y, self.num_classes)


def check_labels(name: str, y: torch.Tensor, num_classes: int) -> None:
    if y.dim() != 1:
        raise ZooError(f"{name}: y must be 1-D (one label per point), got shape {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ZooError(f"{name}: y must hold integer class labels, got fractional values")
    if y.numel() and (y.min() < 0 or y.max() >= num_classes):
        raise ZooError(f"{name}: labels must lie in [0, {num_classes - 1}], got range "
                       f"[{int(y.min())}, {int(y.max())}]")


def _build(name, data, image_shape, channels, hidden, num_classes, prior_scale, dropout, conv_dropout):
    if data is not None:
        image_shape = tuple(training_arrays(data)[0].shape[1:])
    if len(image_shape) != 3:
        raise ZooError(f"{name}: image_shape must be (channels, height, width), got {tuple(image_shape)}")
    if prior_scale <= 0:
        raise ZooError(f"{name}: prior_scale must be positive, got {prior_scale}")
    net = BayesianLeNet(image_shape, tuple(channels), int(hidden), int(num_classes), prior_scale)

    def mean_field(zm, init_scale: float = 1e-3):
        return mean_field_guide("mean_field", net.sites, init_scale)

    def mc_dropout(zm, p: float = dropout, conv_p: float = conv_dropout):
        # lenet-all: dropout after every weight layer, i.e. on the inputs of every layer but the first
        return mc_dropout_guide("mc_dropout", with_dropout(net.sites, {"w1": conv_p, "w2": p, "w3": p}))

    config = dict(image_shape=list(image_shape), channels=list(channels), hidden=int(hidden),
                  num_classes=int(num_classes), prior_scale=prior_scale, dropout=dropout,
                  conv_dropout=conv_dropout)
    return LeNetModel(
        name, net, int(num_classes), guides={"mean-field": mean_field, "mc-dropout": mc_dropout}, config=config,
        init_loc_fn=init_at(net.sites), last_layer=["w3", "b3"], vectorized=True,
        defaults=Defaults(fit={"svi": CONSTANT_RATE_SVI, "laplace": LAST_LAYER_LAPLACE},
                          num_samples=100, predict_batch=64),
    )


@register_model("bayes-lenet", task="classification", family="bayesian-cnn",
                likelihood="Categorical(logits=LeNet(x))", default_guide="mc-dropout",
                guides=("mc-dropout", "mean-field", "delta"), paper=PAPERS,
                notes="MC dropout on every layer's input (channels for conv2) with per-example masks; "
                      "mean-field uses the local reparameterisation (dense) and flipout (conv). nuts is refused "
                      "above 5,000 weights (the default net has 431,080); tiny configs may use it.")
def bayes_lenet(*, data=None, image_shape=(1, 28, 28), channels=(20, 50), hidden: int = 500,
                num_classes: int = 10, prior_scale: float = 1.0, dropout: float = 0.5,
                conv_dropout: float = 0.2) -> ZooModel:
    """Bayesian LeNet-5 (Caffe sizes: 20 and 50 5x5 filters, 500 hidden units) for 28x28 images."""
    return _build("bayes-lenet", data, image_shape, channels, hidden, num_classes, prior_scale,
                  dropout, conv_dropout)


@register_model("lenet", task="classification", family="bayesian-cnn",
                likelihood="Categorical(logits=LeNet(x))", default_guide="delta", guides=("delta",),
                paper=PAPERS, notes="Deterministic twin of bayes-lenet: the MAP point estimate "
                                    "(weight decay from the Gaussian prior), one draw.")
def lenet(*, data=None, image_shape=(1, 28, 28), channels=(20, 50), hidden: int = 500,
          num_classes: int = 10, prior_scale: float = 1.0) -> ZooModel:
    """LeNet-5 trained to a point estimate: the baseline every bayes-lenet benchmark compares to."""
    zm = _build("lenet", data, image_shape, channels, hidden, num_classes, prior_scale, 0.0, 0.0)
    zm.defaults = replace(zm.defaults, num_samples=1)
    return zm
