"""Neural networks: denoisers over action chunks and image observation encoders.

Every denoiser implements :class:`Denoiser`:
``forward(noisy_actions (B, H, D_act), timesteps (B,), global_cond (B, C)) -> (B, H, D_act)``.
Build one by name with :func:`build_denoiser`.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from rlox_dp.networks.base import Denoiser
from rlox_dp.networks.embeddings import SinusoidalPosEmb, timestep_encoder
from rlox_dp.networks.mlp import MLPDenoiser
from rlox_dp.networks.transformer import TransformerForDiffusion
from rlox_dp.networks.unet1d import ConditionalUnet1D
from rlox_dp.networks.vision import (
    MultiImageObsEncoder,
    ResNetImageEncoder,
    SpatialSoftmax,
    center_crop,
    random_crop,
)

__all__ = [
    "DENOISERS",
    "ConditionalUnet1D",
    "Denoiser",
    "MLPDenoiser",
    "MultiImageObsEncoder",
    "ResNetImageEncoder",
    "SinusoidalPosEmb",
    "SpatialSoftmax",
    "TransformerForDiffusion",
    "build_denoiser",
    "center_crop",
    "denoiser_options",
    "random_crop",
    "timestep_encoder",
]

_REGISTRY: dict[str, type[Denoiser]] = {
    "unet": ConditionalUnet1D,
    "mlp": MLPDenoiser,
    "transformer": TransformerForDiffusion,
}

DENOISERS: tuple[str, ...] = tuple(_REGISTRY)
"""Names accepted by :func:`build_denoiser`."""

_COMMON_ARGS = ("self", "action_dim", "horizon", "cond_dim")


def denoiser_options(name: str) -> dict[str, Any]:
    """The extra options of denoiser ``name`` with their defaults, e.g. ``{"hidden_dim": 256, ...}``.

    Raises:
        ValueError: ``name`` is not one of :data:`DENOISERS`.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown denoiser {name!r}; expected one of {list(DENOISERS)}")
    params = inspect.signature(_REGISTRY[name].__init__).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON_ARGS}


def build_denoiser(
    name: Literal["unet", "mlp", "transformer"],
    *,
    action_dim: int,
    horizon: int,
    cond_dim: int,
    **options: Any,
) -> Denoiser:
    """Build the denoiser called ``name`` (one of :data:`DENOISERS`).

    Args:
        name: ``"unet"`` (:class:`ConditionalUnet1D`), ``"mlp"`` (:class:`MLPDenoiser`) or
            ``"transformer"`` (:class:`TransformerForDiffusion`).
        action_dim: ``D_act``.
        horizon: ``H``.
        cond_dim: ``C``, size of the flat conditioning vector.
        **options: architecture options of that denoiser (see :func:`denoiser_options`).

    Raises:
        ValueError: unknown ``name``, or invalid values (from the constructor).
        TypeError: an option the denoiser does not accept; the message names it.
    """
    accepted = denoiser_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for denoiser {name!r}; accepted: {sorted(accepted)}"
        )
    return _REGISTRY[name](action_dim=action_dim, horizon=horizon, cond_dim=cond_dim, **options)
