"""Turn a normalized observation window into the global conditioning vector of a policy."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from torch import nn

from rlox_dp.image_layout import check_channels_first

__all__ = ["ObservationEncoder", "split_observation_keys"]


def split_observation_keys(observation_space: gym.spaces.Dict) -> tuple[list[str], list[str]]:
    """Sorted low-dimensional keys (1-D Box) and image keys (3-D ``(C, H, W)`` Box).

    Raises:
        ValueError: a key of another rank, or a channel-last ``(H, W, C)`` image space (named).
    """
    low_dim, images = [], []
    for key, space in sorted(observation_space.spaces.items()):
        if len(space.shape) == 1:
            low_dim.append(key)
        elif len(space.shape) == 3:
            check_channels_first(space.shape, f"observation space {key!r}")
            images.append(key)
        else:
            raise ValueError(
                f"observation {key!r} has shape {space.shape}; supported are 1-D vectors and "
                "(C, H, W) images"
            )
    return low_dim, images


class ObservationEncoder(nn.Module):
    """Observation window -> flat conditioning vector, as in Diffusion Policy (global conditioning).

    Low-dimensional keys are concatenated as they are; image keys go through a ResNet-18 encoder
    with spatial softmax (:class:`rlox_dp.networks.vision.MultiImageObsEncoder`). Features of all
    ``T_o`` steps are flattened: ``(B, T_o, ...) -> (B, T_o * D_feat)``.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Dict,
        n_obs_steps: int,
        image_encoder_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.low_dim_keys, self.image_keys = split_observation_keys(observation_space)
        self.n_obs_steps = n_obs_steps
        feat = sum(int(observation_space[k].shape[0]) for k in self.low_dim_keys)
        self.image_encoder: nn.Module | None = None
        if self.image_keys:
            from rlox_dp.networks.vision import MultiImageObsEncoder

            shapes = {tuple(observation_space[k].shape) for k in self.image_keys}
            if len(shapes) != 1:
                raise ValueError(f"all image observations must share one shape, got {shapes}")
            self.image_encoder = MultiImageObsEncoder(
                self.image_keys, shapes.pop(), **(image_encoder_kwargs or {})
            )
            feat += self.image_encoder.output_dim
        self.feature_dim = feat
        self.output_dim = feat * n_obs_steps

    def forward(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalized obs key -> ``(B, T_o, ...)`` to conditioning ``(B, T_o * feature_dim)``."""
        parts = [obs[k] for k in self.low_dim_keys]
        if self.image_encoder is not None:
            parts.append(self.image_encoder({k: obs[k] for k in self.image_keys}, generator=generator))
        feats = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
        return feats.flatten(start_dim=1)
