"""A residual MLP denoiser: a small, fast baseline for the 1D conditional U-Net."""

from __future__ import annotations

import torch
from torch import nn

from rlox_dp.networks.base import Denoiser, _check_int
from rlox_dp.networks.embeddings import timestep_encoder

__all__ = ["MLPDenoiser"]


class _ResidualMLPBlock(nn.Module):
    """Pre-norm residual block ``x + Linear(Mish(Linear(LayerNorm(x))))`` on ``(B, hidden_dim)``."""

    def __init__(self, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(hidden_dim),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Mish(),
            nn.Linear(hidden_dim, hidden_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, hidden_dim) -> (B, hidden_dim)``."""
        return x + self.net(x)


class MLPDenoiser(Denoiser):
    """Denoise a whole action chunk at once with a residual MLP.

    The chunk is flattened to ``(B, H * D_act)`` and concatenated with the timestep features
    (sinusoidal embedding -> Linear -> Mish -> Linear, as in the U-Net) and ``global_cond``;
    a linear projection to ``hidden_dim`` is followed by ``n_layers`` pre-norm residual blocks
    (LayerNorm -> Linear -> Mish -> Linear), a final LayerNorm and a linear head back to
    ``(B, H, D_act)``. Default PyTorch initialisation throughout, so every parameter receives
    gradient from the first step.

    Args:
        action_dim: ``D_act``.
        horizon: ``H``.
        cond_dim: ``C``, size of ``global_cond``.
        hidden_dim: width of the residual stream.
        n_layers: number of residual blocks (>= 1).
        timestep_embed_dim: size of the timestep features (even, >= 4).
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        hidden_dim: int = 256,
        n_layers: int = 4,
        timestep_embed_dim: int = 128,
    ) -> None:
        super().__init__(action_dim, horizon, cond_dim)
        _check_int("hidden_dim", hidden_dim, 1)
        _check_int("n_layers", n_layers, 1)
        flat_dim = horizon * action_dim
        self.timestep_encoder = timestep_encoder(timestep_embed_dim)
        self.input_proj = nn.Linear(flat_dim + timestep_embed_dim + cond_dim, hidden_dim)
        self.blocks = nn.Sequential(*(_ResidualMLPBlock(hidden_dim) for _ in range(n_layers)))
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, flat_dim)

    def forward(
        self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        """``(B, H, D_act), (B,), (B, C) -> (B, H, D_act)``; see :meth:`Denoiser.forward`."""
        timesteps = self._check_inputs(noisy_actions, timesteps, global_cond)
        batch = noisy_actions.shape[0]
        x = torch.cat(
            (noisy_actions.reshape(batch, -1), self.timestep_encoder(timesteps), global_cond),
            dim=-1,
        )
        x = self.blocks(self.input_proj(x))
        x = self.output_proj(self.output_norm(x))
        return x.reshape(batch, self.horizon, self.action_dim)
