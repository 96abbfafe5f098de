"""Timestep embeddings shared by the denoisers."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SinusoidalPosEmb", "timestep_encoder"]


class SinusoidalPosEmb(nn.Module):
    """Sinusoidal embedding of a scalar per sample, as in the original Diffusion Policy code.

    ``emb[b] = [sin(t_b * f_0), ..., sin(t_b * f_{d/2-1}), cos(t_b * f_0), ..., cos(t_b * f_{d/2-1})]``
    with ``f_i = exp(-i * log(10000) / (d/2 - 1))``. The frequency table is precomputed as a
    (non-persistent) buffer, so it follows ``.to(device)`` and adds nothing to checkpoints.

    Args:
        dim: embedding size ``d``; must be even and at least 4.
    """

    freqs: torch.Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4 or dim % 2:
            raise ValueError(f"dim must be an even int >= 4, got {dim!r}")
        self.dim = dim
        half_dim = dim // 2
        scale = math.log(10000) / (half_dim - 1)
        freqs = torch.exp(torch.arange(half_dim, dtype=torch.float32) * -scale)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Embed ``(B,)`` timesteps (int or float) into ``(B, dim)`` float features."""
        args = timesteps.to(self.freqs.dtype).unsqueeze(-1) * self.freqs
        return torch.cat((args.sin(), args.cos()), dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def timestep_encoder(dim: int) -> nn.Sequential:
    """The Diffusion Policy timestep encoder: ``SinusoidalPosEmb(dim) -> Linear(dim, 4 dim) ->
    Mish -> Linear(4 dim, dim)``, mapping ``(B,)`` timesteps to ``(B, dim)`` features.

    Indices match the original ``diffusion_step_encoder`` (Linear layers at 1 and 3), so state
    dicts line up with the reference implementation.
    """
    return nn.Sequential(
        SinusoidalPosEmb(dim),
        nn.Linear(dim, dim * 4),
        nn.Mish(),
        nn.Linear(dim * 4, dim),
    )
