"""Neural networks: denoisers over action chunks and image observation encoders.

Every denoiser implements :class:`Denoiser`:
``forward(noisy_actions (B, H, D_act), timesteps (B,), global_cond (B, C)) -> (B, H, D_act)``.
Build one by name with :func:`build_denoiser`; add one with :func:`register_denoiser` (names follow
the rules of :mod:`rlox_dp.registry`: any case, did-you-mean on a miss).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

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
from rlox_dp.registry import Registry

__all__ = [
    "DENOISERS",
    "DENOISER_REGISTRY",
    "ConditionalUnet1D",
    "Denoiser",
    "MLPDenoiser",
    "MultiImageObsEncoder",
    "ResNetImageEncoder",
    "SinusoidalPosEmb",
    "SpatialSoftmax",
    "TransformerForDiffusion",
    "available_denoisers",
    "build_denoiser",
    "center_crop",
    "denoiser_options",
    "random_crop",
    "register_denoiser",
    "timestep_encoder",
]

D = TypeVar("D", bound=type[Denoiser])


def _check_denoiser(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Denoiser)):
        raise TypeError(f"denoiser {name!r}: expected a Denoiser subclass, got {cls!r}")


#: denoiser name -> :class:`Denoiser` subclass, built by :func:`build_denoiser`.
DENOISER_REGISTRY: Registry[type[Denoiser]] = Registry("denoiser", check=_check_denoiser)
DENOISER_REGISTRY.register("unet", ConditionalUnet1D)
DENOISER_REGISTRY.register("mlp", MLPDenoiser)
DENOISER_REGISTRY.register("transformer", TransformerForDiffusion)

DENOISERS: tuple[str, ...] = tuple(DENOISER_REGISTRY.names())
"""The built-in denoisers (:func:`available_denoisers` also lists ones registered later)."""


def register_denoiser(name: str) -> Callable[[D], D]:
    """Class decorator registering a :class:`Denoiser` subclass for :func:`build_denoiser`.

    Its constructor takes ``(action_dim, horizon, cond_dim, **options)``.
    """
    return DENOISER_REGISTRY.register(name)


def available_denoisers() -> list[str]:
    """Names accepted by :func:`build_denoiser` (built-in first, then in registration order)."""
    return DENOISER_REGISTRY.names()


_COMMON_ARGS = ("self", "action_dim", "horizon", "cond_dim")


def denoiser_options(name: str) -> dict[str, Any]:
    """The extra options of denoiser ``name`` with their defaults, e.g. ``{"hidden_dim": 256, ...}``.

    Raises:
        ValueError: ``name`` is not registered (:func:`available_denoisers`).
    """
    params = inspect.signature(DENOISER_REGISTRY.get(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k not in _COMMON_ARGS}


def build_denoiser(
    name: str,
    *,
    action_dim: int,
    horizon: int,
    cond_dim: int,
    **options: Any,
) -> Denoiser:
    """Build the denoiser called ``name`` (any case; one of :func:`available_denoisers`).

    Args:
        name: ``"unet"`` (:class:`ConditionalUnet1D`), ``"mlp"`` (:class:`MLPDenoiser`) or
            ``"transformer"`` (:class:`TransformerForDiffusion`), or a registered one.
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
    return DENOISER_REGISTRY.get(name)(action_dim=action_dim, horizon=horizon, cond_dim=cond_dim, **options)
