"""The one interface every denoising network implements.

A denoiser maps a noisy action chunk, the diffusion timestep and a flat observation
conditioning vector to a tensor of the same shape as the chunk (the predicted noise, the clean
sample or a velocity, depending on the algorithm; the network does not care).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["Denoiser"]


def _check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class Denoiser(nn.Module, ABC):
    """Base class of all denoisers: ``(noisy_actions, timesteps, global_cond) -> (B, H, D_act)``.

    Args:
        action_dim: ``D_act``, size of one action.
        horizon: ``H``, number of actions in a chunk.
        cond_dim: ``C``, size of the flat conditioning vector (``0`` for an unconditional
            denoiser; ``global_cond`` is then an empty ``(B, 0)`` tensor).
    """

    def __init__(self, action_dim: int, horizon: int, cond_dim: int) -> None:
        super().__init__()
        self.action_dim = _check_int("action_dim", action_dim, 1)
        self.horizon = _check_int("horizon", horizon, 1)
        self.cond_dim = _check_int("cond_dim", cond_dim, 0)

    @abstractmethod
    def forward(
        self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        """Denoise a batch of action chunks.

        Args:
            noisy_actions: ``(B, H, D_act)`` float.
            timesteps: ``(B,)`` long (discrete diffusion steps) or float (continuous time);
                a 0-d tensor is broadcast to the batch.
            global_cond: ``(B, C)`` float conditioning (flattened observation features).

        Returns:
            ``(B, H, D_act)`` network prediction.
        """

    def conditioned(
        self, global_cond: torch.Tensor, timesteps: Sequence[int]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A denoise function for one conditioning, to be called at (some of) ``timesteps``.

        Samplers call the network several times with the same ``global_cond``; a subclass can
        compute once here what depends only on ``global_cond`` and on the timesteps it will be
        called at (the U-Net precomputes its FiLM parameters). The default closes over ``forward``.

        Args:
            global_cond: ``(B, C)`` float conditioning.
            timesteps: the timesteps the function will be called at (e.g. a sampler's
                ``timesteps(n)``); calling it at another timestep may raise.

        Returns:
            ``(noisy_actions (B, H, D_act), t (B,)) -> (B, H, D_act)``, equal to
            ``forward(noisy_actions, t, global_cond)`` up to float rounding.
        """
        return lambda noisy_actions, t: self(noisy_actions, t, global_cond)

    def _check_inputs(
        self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        """Validate the shapes of the forward inputs; return ``timesteps`` as a ``(B,)`` tensor."""
        expected = (self.horizon, self.action_dim)
        if noisy_actions.ndim != 3 or tuple(noisy_actions.shape[1:]) != expected:
            raise ValueError(
                f"noisy_actions must have shape (B, {expected[0]}, {expected[1]}) "
                f"= (B, horizon, action_dim), got {tuple(noisy_actions.shape)}"
            )
        batch = noisy_actions.shape[0]
        if global_cond.ndim != 2 or tuple(global_cond.shape) != (batch, self.cond_dim):
            raise ValueError(
                f"global_cond must have shape (B, cond_dim) = ({batch}, {self.cond_dim}), "
                f"got {tuple(global_cond.shape)}"
            )
        if timesteps.ndim == 0:
            return timesteps.expand(batch)
        if timesteps.ndim != 1 or timesteps.shape[0] != batch:
            raise ValueError(
                f"timesteps must have shape (B,) = ({batch},) or be 0-d, "
                f"got {tuple(timesteps.shape)}"
            )
        return timesteps
