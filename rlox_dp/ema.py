"""Exponential moving average of model weights with the original Diffusion Policy power schedule."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(n_updates: int, power: float, inv_gamma: float, min_decay: float, max_decay: float) -> float:
    """Decay of the EMA update that follows ``n_updates`` earlier updates (the original repo's
    ``EMAModel.get_decay(optimization_step)`` with ``update_after_step=0``).

    The warmup counts ``k = n_updates - 1`` and uses ``1 - (1 + k / inv_gamma) ** -power``,
    clamped to ``[min_decay, max_decay]``; while ``k <= 0`` the decay is 0, so the first two
    updates copy the weights. With ``power=0.75``: 0, 0, 0.405, 0.561, 0.646, ... The EMA then
    averages over roughly the last quarter of training early on and approaches ``max_decay`` as
    training continues (@crowsonkb's schedule).
    """
    k = max(0, n_updates - 1)
    if k == 0:
        return 0.0
    value = 1.0 - (1.0 + k / inv_gamma) ** -power
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
        """Average ``model``'s parameters into the EMA copy; returns the decay used.

        :attr:`step` counts the updates made so far (it is saved in checkpoints as ``ema_step``).
        """
        decay = ema_decay(self.step, self.power, self.inv_gamma, self.min_decay, self.max_decay)
        ema_params = [p for p in self.model.parameters()]
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
        self.step += 1
        return decay
