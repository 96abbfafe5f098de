"""Stable-Baselines3-style inputs for :meth:`Algorithm.predict`: one or many observations, a
``Dict`` or a plain ``Box`` observation, and ``episode_start`` flags.

SB3's vectorized envs hand a policy ``key -> (n_envs, *obs_shape)`` for ``Dict`` spaces and
``(n_envs, *obs_shape)`` for ``Box`` spaces; a single env's observation has no batch axis. These
helpers turn all of them into the ``key -> (B, *obs_shape)`` batch :meth:`select_action` takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

__all__ = ["batch_observation", "episode_start_mask"]


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    return tuple(np.shape(value))


def batch_observation(
    observation_space: gym.spaces.Dict, observation: Mapping[str, Any] | np.ndarray | torch.Tensor
) -> tuple[dict[str, Any], bool]:
    """Observation(s) -> ``(key -> (B, *obs_shape), single)``.

    Args:
        observation_space: the policy's ``Dict`` space (key -> ``Box`` of ``obs_shape``).
        observation: key -> ``obs_shape`` (one) or ``(B, *obs_shape)`` (a batch); an array or
            tensor when the space has exactly one key.

    Returns:
        The batch (arrays or tensors as given, with a batch axis of 1 added for one observation)
        and whether a single observation was given.

    Raises:
        TypeError: a plain array for a policy with several observation keys, or not a mapping.
        KeyError: a missing observation key.
        ValueError: a shape that is neither ``obs_shape`` nor ``(B, *obs_shape)``, or keys that
            disagree on the batch size.
    """
    keys = list(observation_space.spaces)
    if isinstance(observation, (np.ndarray, torch.Tensor)):
        if len(keys) != 1:
            raise TypeError(
                f"observation: a plain array only fits a policy with one observation key; this "
                f"policy has keys {keys}, so pass a dict"
            )
        observation = {keys[0]: observation}
    if not isinstance(observation, Mapping):
        raise TypeError(f"observation: expected a dict of arrays or an array, got {type(observation).__name__}")
    missing = [k for k in keys if k not in observation]
    if missing:
        raise KeyError(f"observation is missing keys {missing}; got keys {sorted(observation)}")
    batch: dict[str, Any] = {}
    sizes: dict[str, int | None] = {}
    for key in keys:
        value = observation[key]
        if not isinstance(value, torch.Tensor):
            value = np.asarray(value)
        expected, got = tuple(observation_space[key].shape), _shape(value)
        if got == expected:
            sizes[key] = None
            batch[key] = value[None]
        elif len(got) == len(expected) + 1 and got[1:] == expected and got[0] >= 1:
            sizes[key] = got[0]
            batch[key] = value
        else:
            raise ValueError(
                f"observation {key!r}: expected shape {expected} (one observation) or "
                f"(n_envs, {', '.join(map(str, expected))}) (a batch), got {got}"
            )
    if len(set(sizes.values())) != 1:
        raise ValueError(
            "observation keys disagree on the batch size (None = a single observation): "
            f"{sizes}"
        )
    return batch, next(iter(sizes.values())) is None


def episode_start_mask(episode_start: Any, batch: int, single: bool) -> np.ndarray | None:
    """SB3's ``episode_start`` -> a ``(batch,)`` bool mask (None when not given).

    Raises:
        ValueError: a mask whose length is not the number of observations.
    """
    if episode_start is None:
        return None
    mask = np.asarray(episode_start.cpu() if isinstance(episode_start, torch.Tensor) else episode_start)
    if single and mask.ndim == 0:
        mask = mask.reshape(1)
    if mask.shape != (batch,):
        raise ValueError(
            f"episode_start: expected shape ({batch},) (one flag per observation), got {mask.shape}"
        )
    return mask.astype(bool)
