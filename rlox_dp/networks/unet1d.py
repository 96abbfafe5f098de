"""The 1D temporal convolutional U-Net with FiLM conditioning of Diffusion Policy.

Architecture and module names follow the original implementation (Chi et al.,
``diffusion_policy/model/diffusion/conditional_unet1d.py``, with global conditioning only, as in
LeRobot's ``DiffusionConditionalUnet1d``), so parameter counts and ``state_dict`` keys match the
original for equal arguments. Layout, with ``L = len(down_dims)``::

    (B, H, D_act) -> transpose -> (B, D_act, H)
    down level i (i < L):  2 x ConditionalResidualBlock1D -> skip_i -> Downsample1d (if i < L-1)
    mid:                    2 x ConditionalResidualBlock1D
    up level j (j < L-1):  cat(x, skip_{L-1-j}) -> 2 x ConditionalResidualBlock1D -> Upsample1d
    final:                  Conv1dBlock -> Conv1d(down_dims[0], D_act, 1) -> (B, H, D_act)

There are ``L - 1`` downsamplings and ``L - 1`` up levels, each of which upsamples (the
original's ``is_last`` test in the up path is never true). As in the original, the skip of
level 0 is never concatenated. ``H`` must be divisible by ``2 ** (L - 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rlox_dp.networks.base import Denoiser, _check_int
from rlox_dp.networks.embeddings import timestep_encoder

__all__ = [
    "ConditionalResidualBlock1D",
    "ConditionalUnet1D",
    "Conv1dBlock",
    "Downsample1d",
    "Upsample1d",
    "horizon_multiple",
]


def horizon_multiple(down_dims: tuple[int, ...]) -> int:
    """The U-Net's horizon rule: ``H`` must be a multiple of ``2 ** (len(down_dims) - 1)`` (every
    level but the last halves the time axis, and the up path doubles it back)."""
    return 2 ** (len(down_dims) - 1)


class Conv1dBlock(nn.Module):
    """``Conv1d (same padding) -> GroupNorm -> Mish``: ``(B, C_in, T) -> (B, C_out, T)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, n_groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_channels),
            nn.Mish(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, T) -> (B, C_out, T)``."""
        return self.block(x)


class Downsample1d(nn.Module):
    """Stride-2 convolution (kernel 3, padding 1): ``(B, C, T) -> (B, C, ceil(T / 2))``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T) -> (B, C, ceil(T / 2))``."""
        return self.conv(x)


class Upsample1d(nn.Module):
    """Transposed convolution (kernel 4, stride 2, padding 1): ``(B, C, T) -> (B, C, 2 T)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(dim, dim, 4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, T) -> (B, C, 2 T)``."""
        return self.conv(x)


class ConditionalResidualBlock1D(nn.Module):
    """Two :class:`Conv1dBlock` with FiLM conditioning in between and a residual connection.

    ``out = conv2(FiLM(conv1(x), cond)) + residual(x)`` where FiLM is ``scale * h + bias``
    (``use_film_scale_modulation=True``; the raw scale, as in the original, not ``1 + scale``)
    or ``h + bias``; ``(scale, bias)`` come from ``Linear(Mish(cond))``. ``residual`` is a 1x1
    convolution when the channel count changes, else the identity.

    Args:
        in_channels: ``C_in``.
        out_channels: ``C_out`` (divisible by ``n_groups``).
        cond_dim: size of the conditioning vector.
        kernel_size: odd convolution kernel size.
        n_groups: GroupNorm groups.
        use_film_scale_modulation: predict a per-channel scale as well as a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        cond_dim: int,
        kernel_size: int = 3,
        n_groups: int = 8,
        use_film_scale_modulation: bool = False,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.use_film_scale_modulation = use_film_scale_modulation
        self.blocks = nn.ModuleList(
            [
                Conv1dBlock(in_channels, out_channels, kernel_size, n_groups=n_groups),
                Conv1dBlock(out_channels, out_channels, kernel_size, n_groups=n_groups),
            ]
        )
        cond_channels = 2 * out_channels if use_film_scale_modulation else out_channels
        self.cond_encoder = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, cond_channels))
        self.residual_conv: nn.Module = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x: (B, C_in, T)``, ``cond: (B, cond_dim)`` -> ``(B, C_out, T)``."""
        return self.modulated(x, self.cond_encoder(cond))

    def modulated(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """``x: (B, C_in, T)`` with the FiLM parameters ``film = cond_encoder(cond)``
        ``(B, 2 C_out)`` (scale, bias) or ``(B, C_out)`` -> ``(B, C_out, T)``."""
        out = self.blocks[0](x)
        embed = film.unsqueeze(-1)
        if self.use_film_scale_modulation:
            scale = embed[:, : self.out_channels]
            bias = embed[:, self.out_channels :]
            out = torch.addcmul(bias, scale, out)
        else:
            out = out + embed
        out = self.blocks[1](out)
        return out + self.residual_conv(x)


class ConditionalUnet1D(Denoiser):
    """Diffusion Policy's 1D conditional U-Net over the action-chunk time axis.

    The FiLM conditioning vector of every residual block is
    ``cat(timestep_encoder(t), global_cond)`` of size ``diffusion_step_embed_dim + cond_dim``.
    Inputs and outputs are channels-last ``(B, H, D_act)``; the transposes are views.

    Differences from the original: none in parameters or computation for the defaults; the
    final :class:`Conv1dBlock` uses ``n_groups`` (the original hard-codes 8 there, which only
    differs when ``n_groups != 8``).

    Args:
        action_dim: ``D_act``.
        horizon: ``H``; must be divisible by ``2 ** (len(down_dims) - 1)``.
        cond_dim: ``C``, size of ``global_cond`` (e.g. ``n_obs_steps * obs_feature_dim``).
        down_dims: channels of each U-Net level; each divisible by ``n_groups``.
        kernel_size: odd temporal kernel size of the residual blocks.
        n_groups: GroupNorm groups.
        diffusion_step_embed_dim: size of the timestep features (even, >= 4).
        use_film_scale_modulation: FiLM with scale and bias (True) or bias only (False).

    Raises:
        ValueError: naming ``horizon``, ``down_dims``, ``kernel_size``, ``n_groups`` or
            ``diffusion_step_embed_dim`` when they are inconsistent.
    """

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        down_dims: Sequence[int] = (256, 512, 1024),
        kernel_size: int = 5,
        n_groups: int = 8,
        diffusion_step_embed_dim: int = 128,
        use_film_scale_modulation: bool = True,
    ) -> None:
        super().__init__(action_dim, horizon, cond_dim)
        down_dims = tuple(down_dims)
        _check_int("n_groups", n_groups, 1)
        if not down_dims or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 or d % n_groups
            for d in down_dims
        ):
            raise ValueError(
                f"down_dims must be a non-empty sequence of positive ints divisible by "
                f"n_groups={n_groups}, got {down_dims!r}"
            )
        if _check_int("kernel_size", kernel_size, 1) % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        factor = horizon_multiple(down_dims)
        if horizon % factor:
            raise ValueError(
                f"horizon must be divisible by 2 ** (len(down_dims) - 1) = {factor} for "
                f"down_dims={down_dims}, got horizon={horizon}"
            )
        self.down_dims = down_dims
        self.diffusion_step_embed_dim = diffusion_step_embed_dim
        self.use_film_scale_modulation = use_film_scale_modulation

        self.diffusion_step_encoder = timestep_encoder(diffusion_step_embed_dim)
        film_dim = diffusion_step_embed_dim + cond_dim

        def block(c_in: int, c_out: int) -> ConditionalResidualBlock1D:
            return ConditionalResidualBlock1D(
                c_in, c_out, film_dim, kernel_size, n_groups, use_film_scale_modulation
            )

        in_out = list(zip((action_dim, *down_dims[:-1]), down_dims, strict=True))
        self.down_modules = nn.ModuleList(
            nn.ModuleList(
                [
                    block(c_in, c_out),
                    block(c_out, c_out),
                    Downsample1d(c_out) if level < len(in_out) - 1 else nn.Identity(),
                ]
            )
            for level, (c_in, c_out) in enumerate(in_out)
        )
        self.mid_modules = nn.ModuleList(
            [block(down_dims[-1], down_dims[-1]), block(down_dims[-1], down_dims[-1])]
        )
        self.up_modules = nn.ModuleList(
            nn.ModuleList([block(2 * c_out, c_in), block(c_in, c_in), Upsample1d(c_in)])
            for c_in, c_out in reversed(in_out[1:])
        )
        self.final_conv = nn.Sequential(
            Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups=n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    @property
    def film_blocks(self) -> list[ConditionalResidualBlock1D]:
        """The residual blocks in the order :meth:`forward` runs them (down, mid, up)."""
        blocks = [block for level in self.down_modules for block in level[:2]]
        blocks += list(self.mid_modules)
        blocks += [block for level in self.up_modules for block in level[:2]]
        return blocks

    def forward(
        self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, global_cond: torch.Tensor
    ) -> torch.Tensor:
        """``(B, H, D_act), (B,), (B, C) -> (B, H, D_act)``; see :meth:`Denoiser.forward`."""
        timesteps = self._check_inputs(noisy_actions, timesteps, global_cond)
        global_feature = torch.cat((self.diffusion_step_encoder(timesteps), global_cond), dim=-1)
        return self.backbone(
            noisy_actions, [block.cond_encoder(global_feature) for block in self.film_blocks]
        )

    def backbone(self, noisy_actions: torch.Tensor, films: Sequence[torch.Tensor]) -> torch.Tensor:
        """The U-Net given each residual block's FiLM parameters: ``(B, H, D_act) -> (B, H, D_act)``.

        ``films``: ``block.cond_encoder(global_feature)`` of every block of :attr:`film_blocks`,
        in that order (``(B, 2 C_out)`` or ``(B, C_out)`` each).
        """
        films = iter(films)
        x = noisy_actions.transpose(1, 2)
        skips: list[torch.Tensor] = []
        for resnet, resnet2, downsample in self.down_modules:
            x = resnet2.modulated(resnet.modulated(x, next(films)), next(films))
            skips.append(x)
            x = downsample(x)
        for mid in self.mid_modules:
            x = mid.modulated(x, next(films))
        for resnet, resnet2, upsample in self.up_modules:
            x = torch.cat((x, skips.pop()), dim=1)
            x = upsample(resnet2.modulated(resnet.modulated(x, next(films)), next(films)))
        return self.final_conv(x).transpose(1, 2)
