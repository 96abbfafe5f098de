"""Behaviour cloning baselines: BC-MLP (one action) and BC-chunk (a chunk of ``horizon`` actions).

Both regress normalized actions with a mean-squared error, so on multimodal demonstrations they
predict the average of the modes — the failure Diffusion Policy is built to avoid.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import gymnasium as gym
import torch
from torch import nn

from rlox_dp.algorithms.base import Algorithm, PolicyConfig, register_algorithm
from rlox_dp.algorithms.observation import ObservationEncoder
from rlox_dp.buffers import Batch, Normalizer
from rlox_dp.config import ConfigError
from rlox_dp.distributed import GlobalBatch

__all__ = ["BCChunkConfig", "BCChunkPolicy", "BCConfig", "BCPolicy", "masked_mse"]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, is_pad: torch.Tensor) -> torch.Tensor:
    """Mean squared error with padded actions zeroed out (LeRobot's convention).

    The sum runs over real actions only and is divided by the number of ALL entries, so the loss
    of a batch is exactly the mean of the losses of its equal-sized parts (what makes
    data-parallel training equal to one process with the global batch).

    Args:
        pred, target: ``(B, H, D_act)``.
        is_pad: ``(B, H)`` bool; padded actions do not contribute.
    """
    valid = (~is_pad).unsqueeze(-1).to(pred.dtype)
    return ((pred - target).square() * valid).mean()


def mlp(in_dim: int, out_dim: int, hidden_dim: int, n_layers: int) -> nn.Sequential:
    """``n_layers`` hidden Linear+Mish layers of width ``hidden_dim``, then a linear output."""
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(n_layers):
        layers += [nn.Linear(dim, hidden_dim), nn.Mish()]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim))
    return nn.Sequential(*layers)


@dataclasses.dataclass
class BCConfig(PolicyConfig):
    """BC-MLP: predicts the current action from ``n_obs_steps`` observations.

    ``horizon`` defaults to ``n_obs_steps`` and ``n_action_steps`` to 1 (one action per call);
    use ``"bc_chunk"`` for chunked prediction. Images go through the encoder ``vision_backbone``
    (``"resnet18"`` or ``"compact"``) at ``vision_precision``, as in ``DiffusionConfig``.
    Trained by default at lr 1e-3 without EMA (:meth:`training_defaults`).
    """

    horizon: int | None = None  # type: ignore[assignment]
    hidden_dim: int = 256
    n_layers: int = 3
    image_crop_shape: tuple[int, int] | None = (84, 84)
    vision_backbone: Literal["resnet18", "compact"] = "resnet18"
    vision_precision: Literal["auto", "float32", "bfloat16"] = "float32"

    ALIASES: ClassVar[dict[str, str]] = {**PolicyConfig.ALIASES}

    def training_defaults(self) -> dict[str, Any]:
        """:class:`PolicyConfig`'s, at lr 1e-3 and without EMA."""
        return {**super().training_defaults(), "lr": 1e-3, "use_ema": False}

    def validate(self) -> None:
        if self.horizon is None:
            self.horizon = self.n_obs_steps
        if self.horizon != self.n_obs_steps:
            raise ConfigError(
                f"config field 'horizon' of 'bc' must equal n_obs_steps ({self.n_obs_steps}): BC-MLP "
                f"predicts one action; got {self.horizon}. Use the 'bc_chunk' algorithm for chunks."
            )
        if self.n_action_steps is None:
            self.n_action_steps = 1
        if self.n_action_steps != 1:
            raise ConfigError(
                f"config field 'n_action_steps' of 'bc' must be 1, got {self.n_action_steps}; "
                "use the 'bc_chunk' algorithm to execute several actions per call"
            )
        if self.hidden_dim < 1 or self.n_layers < 1:
            raise ConfigError(
                f"config fields 'hidden_dim' and 'n_layers' must be >= 1, got {self.hidden_dim}, {self.n_layers}"
            )
        super().validate()


@dataclasses.dataclass
class BCChunkConfig(BCConfig):
    """BC-chunk: predicts ``horizon`` actions at once and executes ``n_action_steps`` of them."""

    horizon: int = 16  # type: ignore[assignment]

    def validate(self) -> None:
        if self.hidden_dim < 1 or self.n_layers < 1:
            raise ConfigError(
                f"config fields 'hidden_dim' and 'n_layers' must be >= 1, got {self.hidden_dim}, {self.n_layers}"
            )
        PolicyConfig.validate(self)


class _BCBase(Algorithm):
    """MLP from the flattened observation window to ``n_out`` normalized actions."""

    def __init__(
        self,
        config: BCConfig,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Box,
        normalizer: Normalizer,
    ) -> None:
        super().__init__(config, observation_space, action_space, normalizer)
        self.obs_encoder = ObservationEncoder(
            observation_space, config.n_obs_steps,
            {"crop_shape": config.image_crop_shape, "backbone": config.vision_backbone,
             "precision": config.vision_precision},
        )
        self.n_out = self._n_predicted()
        self.net = mlp(self.obs_encoder.output_dim, self.n_out * self.action_dim,
                       config.hidden_dim, config.n_layers)

    def _n_predicted(self) -> int:
        raise NotImplementedError

    def _predict(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None) -> torch.Tensor:
        cond = self.obs_encoder(obs, generator)
        return self.net(cond).view(cond.shape[0], self.n_out, self.action_dim)


@register_algorithm("bc")
class BCPolicy(_BCBase):
    """BC-MLP: MSE regression of the action at the current (last observed) step."""

    config_class: ClassVar[type[PolicyConfig]] = BCConfig

    def _n_predicted(self) -> int:
        return 1

    def compute_loss(
        self, batch: Batch, generator: torch.Generator | None = None, *, global_batch: GlobalBatch | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """MSE between the predicted and demonstrated action at step ``T_o - 1`` of the window."""
        t = self.config.n_obs_steps - 1
        pred = self._predict(batch.obs, generator)
        loss = masked_mse(pred, batch.action[:, t : t + 1], batch.action_is_pad[:, t : t + 1])
        return loss, {"mse": loss.detach()}

    def predict_normalized_actions(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, T_o, ...)`` per key -> ``(B, 1, D_act)``."""
        return self._predict(obs, generator)


@register_algorithm("bc_chunk")
class BCChunkPolicy(_BCBase):
    """BC-chunk: MSE regression of the whole ``horizon`` action chunk (padding masked)."""

    config_class: ClassVar[type[PolicyConfig]] = BCChunkConfig

    def _n_predicted(self) -> int:
        return self.config.horizon

    def compute_loss(
        self, batch: Batch, generator: torch.Generator | None = None, *, global_batch: GlobalBatch | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Masked MSE over the ``(B, H, D_act)`` chunk."""
        pred = self._predict(batch.obs, generator)
        loss = masked_mse(pred, batch.action, batch.action_is_pad)
        return loss, {"mse": loss.detach()}

    def predict_normalized_actions(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``(B, T_o, ...)`` per key -> the executed slice ``(B, n_action_steps, D_act)``."""
        start = self.config.n_obs_steps - 1
        return self._predict(obs, generator)[:, start : start + self.config.n_action_steps]
