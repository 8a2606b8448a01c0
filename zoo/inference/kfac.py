"""Kronecker-factored curvature (KFAC, Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016) read
off an ordinary Pyro model.

A Pyro network is code, not an ``nn.Module``: its layers are wherever a weight site meets a matrix product or a
convolution. :class:`LayerCapture` finds them while the model runs, with a torch function mode: it follows each
weight site's tensor through views (transpose, reshape, slicing) by replaying them on a tensor of the weight's
flat coordinates, and at ``matmul`` / ``linear`` / ``conv2d`` it records the layer's input and hooks its
output's gradient. A bias added to a product's output (or passed to ``linear`` / ``conv2d``) joins that layer's
block, its input a constant 1, as laplace-torch and curvlinops treat a layer's weight and bias. A site used any
other way on a differentiable path (an embedding lookup, a product with another weight, the likelihood's scale)
is named in ``unmatched``: its curvature must come from elsewhere.

Factors follow curvlinops' KFAC-expand convention: with rows r running over points and shared positions (time
steps, pixels), ``A = sum_r a a^T / R`` and ``G = sum_r g g^T`` (per Monte Carlo draw of y).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

VIEWS = {"transpose", "t", "T", "mT", "permute", "reshape", "view", "squeeze", "unsqueeze", "flatten", "unflatten",
         "__getitem__", "contiguous", "narrow", "select", "chunk", "split", "unbind", "movedim", "swapaxes"}
PRODUCTS = {"matmul", "__matmul__", "mm", "linear"}
ADDS = {"add", "__add__", "__radd__"}


def _name(func) -> str:
    name = getattr(func, "__name__", "")
    if name == "__get__":  # a property such as Tensor.T
        name = getattr(getattr(func, "__self__", None), "__name__", name)
    return name


@dataclass
class Layer:
    """One layer's Kronecker block over the flat coordinates ``order``: ``A (x) G`` where the weight is used as
    ``x @ W`` (W (in, out): ``input_first``), else ``G (x) A`` (W (out, in ...)); A over the inputs with a
    trailing 1 where a bias is added."""

    weight: torch.Tensor  # flat coordinates of the weight, in the block's layout; empty for a lone bias
    input_first: bool
    outputs: int
    bias: torch.Tensor | None = None
    a_cov: torch.Tensor | float = 0.0
    a_sum: torch.Tensor | float = 0.0
    rows: int = 0
    g_cov: torch.Tensor | None = None
    draws: int = 0  # Monte Carlo draws of y accumulated into g_cov

    @property
    def order(self) -> torch.Tensor:
        """Flat coordinates in the block's row-major layout: (in [+1], out) or (out, in [+1])."""
        if self.bias is None:
            return self.weight
        if self.input_first:
            return torch.cat([self.weight, self.bias])
        return torch.cat([self.weight.reshape(self.outputs, -1), self.bias.reshape(-1, 1)], 1).reshape(-1)

    @property
    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.g_cov / max(self.draws, 1)
        a = torch.as_tensor(self.a_cov, dtype=g.dtype, device=g.device).reshape(self.inputs, self.inputs)
        if self.bias is not None:
            total = torch.as_tensor(self.a_sum, dtype=g.dtype, device=g.device).reshape(self.inputs, 1)
            count = torch.full((1, 1), float(self.rows), dtype=g.dtype, device=g.device)
            a = torch.cat([torch.cat([a, total], 1), torch.cat([total.T, count], 1)], 0)
        a = a / max(self.rows, 1)
        return (a, g) if self.input_first else (g, a)

    def take_bias(self, index: torch.Tensor) -> bool:
        """Join the bias of these coordinates to the block; False where the layer already has another."""
        index = index.reshape(-1)
        if self.bias is None and index.numel() == self.outputs:
            self.bias = index
        return self.bias is not None and torch.equal(self.bias, index)

    @property
    def inputs(self) -> int:
        return self.weight.numel() // self.outputs


@dataclass
class LayerCapture(TorchFunctionMode):
    """Records the layers of the weight sites ``values`` (site -> the tensor the model receives, ``offsets`` its
    first flat coordinate) while the model runs: ``layers``, and ``unmatched``, the sites used otherwise on a
    differentiable path."""

    values: dict[str, torch.Tensor]
    offsets: dict[str, int]
    layers: list = field(default_factory=list)
    unmatched: set = field(default_factory=set)

    def __post_init__(self):
        super().__init__()
        self.tracked = {id(v): (n, self.offsets[n] + torch.arange(v.numel(), device=v.device).reshape(v.shape), v)
                        for n, v in self.values.items()}
        self.products = {}  # id of a product's output -> (its layer, the output), for a bias added next

    def _lookup(self, value):
        hit = self.tracked.get(id(value)) if isinstance(value, torch.Tensor) else None
        return hit if hit is not None and hit[2] is value else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        hits = {i: h for i, a in enumerate(args) if (h := self._lookup(a)) is not None}
        nested = [h for a in tree_flatten((args, kwargs))[0] if (h := self._lookup(a)) is not None]
        if nested and not (len(nested) == len(hits) and self._matched(_name(func), func, args, kwargs, out, hits)):
            if _differentiable(out):
                self.unmatched.update(h[0] for h in nested)
        return out

    def _matched(self, name, func, args, kwargs, out, hits) -> bool:
        if name in VIEWS and list(hits) == [0]:
            return self._view(func, args, kwargs, out, hits[0])
        if name == "conv2d":
            return self._conv(args, kwargs, out, hits)
        if name in PRODUCTS:
            return self._product(name, args, out, hits)
        return name in ADDS and len(hits) == 1 and self._bias(args, out, hits)

    def _view(self, func, args, kwargs, out, hit) -> bool:
        if any(isinstance(a, torch.Tensor) for a in tree_flatten((args[1:], kwargs))[0]):
            return False  # indexing by a tensor gathers entries: an embedding, not a view
        site, index, _ = hit
        replayed = func(index, *args[1:], **kwargs)
        pairs = list(zip(out, replayed, strict=True)) if isinstance(out, (tuple, list)) else [(out, replayed)]
        if any(r.unique().numel() != r.numel() for _, r in pairs):  # an entry used twice: not a layer's weight
            return False
        for o, r in pairs:
            self.tracked[id(o)] = (site, r, o)
        return True

    def _product(self, name, args, out, hits) -> bool:
        """``x @ W`` (W (in, out)) or ``linear(x, W, b)`` (W (out, in))."""
        linear = name == "linear"
        if 1 not in hits or 0 in hits or (set(hits) - {1, 2} if linear else len(hits) != 1):
            return False
        index = hits[1][1]
        if index.dim() != 2 or not _differentiable(out):
            return False
        layer = self._layer(index.reshape(-1), not linear, out.shape[-1])
        if 2 in hits and not layer.take_bias(hits[2][1]):
            return False
        self._add_inputs(layer, args[0].detach().reshape(-1, args[0].shape[-1]))
        self._hook(layer, out, _rows)
        self.products[id(out)] = (layer, out)
        return True

    def _conv(self, args, kwargs, out, hits) -> bool:
        params = dict(zip(("input", "weight", "bias", "stride", "padding", "dilation", "groups"), args, strict=False))
        params.update(kwargs)
        if set(hits) - {1, 2} or 1 not in hits or params.get("groups", 1) != 1 or not _differentiable(out):
            return False
        _, index, weight = hits[1]
        layer = self._layer(index.reshape(-1), False, weight.shape[0])  # G (x) A over patches
        if 2 in hits and not layer.take_bias(hits[2][1]):
            return False
        patches = F.unfold(params["input"].detach(), weight.shape[-2:], dilation=params.get("dilation", 1),
                           padding=params.get("padding", 0), stride=params.get("stride", 1))
        self._add_inputs(layer, patches.transpose(1, 2).reshape(-1, patches.shape[1]))
        self._hook(layer, out, _channels_last)
        return True

    def _bias(self, args, out, hits) -> bool:
        """``y + b`` with b a vector over y's last dim (after size-1 dims): joins y's layer where y is a
        product's output, else a block of its own."""
        (pos, (_, index, _)), = hits.items()
        other = args[1 - pos] if len(args) == 2 else None
        if (not isinstance(other, torch.Tensor) or index.numel() != index.shape[-1]
                or other.shape[-1:] != index.shape[-1:] or not _differentiable(out)):
            return False
        product = self.products.pop(id(other), None)
        if product is not None and product[1] is other:
            return product[0].take_bias(index)
        layer = self._layer(torch.empty(0, dtype=torch.long, device=index.device), False, index.numel(),
                            index.reshape(-1))
        self._add_inputs(layer, torch.empty(other.reshape(-1, index.numel()).shape[0], 0, device=other.device))
        self._hook(layer, out, _rows)
        return True

    def _layer(self, weight, input_first, outputs, bias=None) -> Layer:
        """The layer of these weight coordinates (a lone bias: of these bias coordinates), found again when a
        weight is shared over steps (a recurrence) or blocks of points."""
        for layer in self.layers:
            if torch.equal(layer.weight, weight) and (weight.numel() or torch.equal(layer.bias, bias)):
                return layer
        self.layers.append(Layer(weight, input_first, outputs, bias))
        return self.layers[-1]

    @staticmethod
    def _add_inputs(layer, a):
        a = a.double()
        layer.a_cov = layer.a_cov + a.T @ a
        layer.a_sum = layer.a_sum + a.sum(0)
        layer.rows += a.shape[0]

    @staticmethod
    def _hook(layer, out, rows):
        def accumulate(grad):
            g = rows(grad.detach()).double()
            layer.g_cov = g.T @ g if layer.g_cov is None else layer.g_cov + g.T @ g

        out.register_hook(accumulate)


def _rows(grad):
    return grad.reshape(-1, grad.shape[-1])


def _channels_last(grad):
    return grad.movedim(1, -1).reshape(-1, grad.shape[1])


def _differentiable(out) -> bool:
    outs = out if isinstance(out, (tuple, list)) else [out]
    return any(isinstance(o, torch.Tensor) and o.requires_grad for o in outs)


def capture_layers(joint, theta: torch.Tensor, names, fisher_samples: int, blocks) -> LayerCapture:
    """The layers of the weight sites ``names`` and their Monte Carlo Fisher factors at ``theta``: the model run
    on each block of points under :class:`LayerCapture`, then ``fisher_samples`` backward passes of the
    log-likelihood of observations drawn from the model."""
    values = {n: v.detach() for n, v in joint.latents.constrain(theta).items()}
    for n in names:
        values[n].requires_grad_(True)
    capture = LayerCapture({n: values[n] for n in names}, {n: joint.latents.spans[n][0] for n in names})
    leaves = list(capture.values.values())
    for indices in blocks:
        capture.products.clear()
        with capture:
            trace = joint.trace_at(values, indices)
        laws = [trace.nodes[n]["fn"] for n in joint.sites.observed]
        for _ in range(fisher_samples):
            with torch.no_grad():
                simulated = [law.sample() for law in laws]
            log_lik = sum(law.log_prob(y).sum() for law, y in zip(laws, simulated, strict=True))
            if log_lik.requires_grad:
                torch.autograd.grad(log_lik, leaves, retain_graph=True, allow_unused=True)
    for layer in capture.layers:
        layer.draws = fisher_samples
        if layer.g_cov is None:  # its output never reached the likelihood
            layer.g_cov = torch.zeros(layer.outputs, layer.outputs, dtype=torch.float64, device=theta.device)
    return capture
