"""Exponential moving average of model weights with the original Diffusion Policy power schedule."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(step: int, power: float, inv_gamma: float, min_decay: float, max_decay: float) -> float:
    """Decay after ``step`` optimizer steps: ``1 - (1 + step / inv_gamma) ** -power``, clamped.

    With ``power=0.75`` the EMA averages over roughly the last quarter of training early on and
    approaches ``max_decay`` as training continues (@crowsonkb's schedule, as in the original repo).
    """
    value = 1.0 - (1.0 + step / inv_gamma) ** -power
    return max(min_decay, min(value, max_decay))


class EMA:
    """Holds an averaged copy of ``model``; ``update`` folds in the current weights.

    Floating-point parameters are averaged; buffers (normalizer statistics, bounds) are copied.
    """

    def __init__(
        self, model: nn.Module, *, power: float = 0.75, inv_gamma: float = 1.0,
        min_decay: float = 0.0, max_decay: float = 0.9999,
    ) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.power, self.inv_gamma = power, inv_gamma
        self.min_decay, self.max_decay = min_decay, max_decay
        self.step = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Average ``model``'s parameters into the EMA copy; returns the decay used."""
        decay = ema_decay(self.step, self.power, self.inv_gamma, self.min_decay, self.max_decay)
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.step += 1
        return decay
