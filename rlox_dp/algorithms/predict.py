"""The inputs of acting: Stable-Baselines3-style inputs for :meth:`Algorithm.predict` (one or
many observations, a ``Dict`` or a plain ``Box`` observation, and ``episode_start`` flags) and the
checked observation batch of :meth:`Algorithm.select_action`.

SB3's vectorized envs hand a policy ``key -> (n_envs, *obs_shape)`` for ``Dict`` spaces and
``(n_envs, *obs_shape)`` for ``Box`` spaces; a single env's observation has no batch axis. These
helpers turn all of them into the ``key -> (B, *obs_shape)`` batch :meth:`select_action` takes,
which :func:`checked_observation_batch` checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch

__all__ = ["as_tensor", "batch_observation", "checked_observation_batch", "episode_start_mask"]


def as_tensor(x: Any, device: torch.device) -> torch.Tensor:
    """``x`` (a tensor, numpy array or nested sequence) as a tensor on ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.as_tensor(np.asarray(x), device=device)


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


def checked_observation_batch(
    observation_space: gym.spaces.Dict, obs: Mapping[str, Any], device: torch.device
) -> dict[str, torch.Tensor]:
    """:meth:`Algorithm.select_action`'s input as tensors on ``device``, checked: every key of
    ``observation_space``, shape ``(B, *obs_shape)`` with one ``B``, finite values.

    Raises:
        TypeError: ``obs`` is not a mapping.
        KeyError: a missing observation key.
        ValueError: a key's shape is not ``(B, *obs_shape)`` (e.g. no batch dimension), NaN/inf
            (naming the key and the rows), or keys that disagree on ``B``.
    """
    if not isinstance(obs, Mapping):
        raise TypeError(f"select_action: expected a dict of observation arrays, got {type(obs).__name__}")
    missing = [k for k in observation_space.spaces if k not in obs]
    if missing:
        raise KeyError(f"select_action: observation is missing keys {missing}; got keys {sorted(obs)}")
    batch: dict[str, torch.Tensor] = {}
    for key, space in observation_space.spaces.items():
        value = as_tensor(obs[key], device)
        expected = tuple(space.shape)
        if value.ndim != len(expected) + 1 or tuple(value.shape[1:]) != expected or value.shape[0] < 1:
            hint = ("; it has no batch dimension: pass a batch of one, e.g. obs[None] / "
                    "x[np.newaxis]") if tuple(value.shape) == expected else ""
            raise ValueError(f"select_action: observation {key!r} must have shape (B, "
                             f"{', '.join(map(str, expected))}), got {tuple(value.shape)}{hint}")
        if value.is_floating_point():
            finite = torch.isfinite(value.reshape(value.shape[0], -1)).all(dim=1)
            if not bool(finite.all()):
                rows = torch.nonzero(~finite).flatten().tolist()
                raise ValueError(f"select_action: observation {key!r} contains NaN or inf (batch "
                                 f"rows {rows[:10]}); the policy would act on garbage")
        batch[key] = value
    sizes = {k: v.shape[0] for k, v in batch.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"select_action: observation keys disagree on the batch size B: {sizes}")
    return batch
