"""One Adam over every parameter an SVI step touches, in one fused update.

Pyro's optimisers keep a torch optimiser (and a scheduler) per parameter and step each in turn: on a small
network that Python costs more than the step's arithmetic. Here one fused ``torch.optim.Adam`` holds them
all; a parameter first seen later joins it as a new group.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam at ``lr * gamma**t`` on step t. ``clip``: each gradient element is first clamped to
    [-clip, clip] (Pyro's ``ClippedAdam``). ``step_scales``: parameter -> per-element factors its updates are
    multiplied by (Adam in coordinates rescaled by them)."""

    def __init__(self, lr: float, gamma: float, clip: float | None = None):
        self.lr, self.gamma, self.clip = lr, gamma, clip
        self.step_scales: dict[torch.Tensor, torch.Tensor] = {}
        self.steps = 0
        self._optim: torch.optim.Adam | None = None
        self._known: set[torch.Tensor] = set()

    def step(self, params: list[torch.Tensor]) -> None:
        """One update of ``params`` from their ``.grad``, which it then clears."""
        new = [p for p in params if p not in self._known]
        if new:
            self._add(new)
        if self.clip is not None:
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_clamp_min_(grads, -self.clip)
            torch._foreach_clamp_max_(grads, self.clip)
        lr = self.lr * self.gamma ** self.steps
        for group in self._optim.param_groups:
            group["lr"] = lr
        before = [(p, p.detach().clone()) for p in params if p in self.step_scales]
        self._optim.step()
        with torch.no_grad():
            for p, old in before:
                p.copy_(old + (p - old) * self.step_scales[p])
        self._optim.zero_grad(set_to_none=True)
        self.steps += 1

    def _add(self, params: list[torch.Tensor]) -> None:
        self._known.update(params)
        if self._optim is None:
            self._optim = torch.optim.Adam(params, lr=self.lr, fused=True)
        else:
            self._optim.add_param_group({"params": params})
