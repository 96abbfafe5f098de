"""Demonstrations from per-episode rollouts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlox_dp.buffers.demonstration_buffer import validate_demonstrations
from rlox_dp.buffers.demonstrations import Demonstrations

__all__ = ["demonstrations_from_episodes"]


def _episode_obs(i: int, obs: Any) -> dict[str, np.ndarray]:
    if isinstance(obs, Mapping):
        if not obs:
            raise ValueError(f"episodes[{i}]['obs'] is an empty dict")
        return {str(k): np.asarray(v) for k, v in obs.items()}
    return {"state": np.asarray(obs)}


def demonstrations_from_episodes(episodes: Sequence[Mapping[str, Any]]) -> Demonstrations:
    """Concatenate per-episode rollouts into :class:`Demonstrations`.

    Args:
        episodes: one mapping per episode with ``"obs"`` (dict key -> ``(L, ...)`` or an
            array ``(L, D)``, stored as key ``"state"``), ``"action"`` ``(L, D_act)``, and
            optionally ``"reward"`` ``(L,)`` and ``"seed"`` (int). Every episode must have
            the same keys; obs and actions have the same length L >= 1 (drop the final
            observation that follows the last action).
    """
    if isinstance(episodes, Mapping) or len(episodes) == 0:
        raise ValueError("episodes must be a non-empty sequence of per-episode mappings")
    obs_parts: dict[str, list[np.ndarray]] = {}
    actions, rewards, seeds, ends = [], [], [], []
    first_keys = None
    for i, ep in enumerate(episodes):
        if not isinstance(ep, Mapping) or "obs" not in ep or "action" not in ep:
            raise ValueError(f"episodes[{i}] must be a mapping with 'obs' and 'action'")
        keys = set(ep) & {"reward", "seed"}
        obs = _episode_obs(i, ep["obs"])
        if first_keys is None:
            first_keys = (keys, set(obs))
            obs_parts = {k: [] for k in obs}
        elif (keys, set(obs)) != first_keys:
            raise ValueError(f"episodes[{i}] has keys {sorted(keys)} / obs keys {sorted(obs)}; "
                             f"episodes[0] has {sorted(first_keys[0])} / {sorted(first_keys[1])}")
        action = np.asarray(ep["action"])
        if action.ndim != 2:
            raise ValueError(f"episodes[{i}]['action'] must have shape (L, D_act), got {action.shape}")
        length = action.shape[0]
        if length == 0:
            raise ValueError(f"episodes[{i}] is empty (0 steps)")
        for k, v in obs.items():
            if v.ndim < 1 or v.shape[0] != length:
                raise ValueError(f"episodes[{i}] obs {k!r} has shape {v.shape}, expected first dim "
                                 f"L = {length} (the action length; drop the final observation)")
            obs_parts[k].append(v)
        actions.append(action)
        if "reward" in keys:
            reward = np.asarray(ep["reward"])
            if reward.shape != (length,):
                raise ValueError(f"episodes[{i}]['reward'] must have shape ({length},), got {reward.shape}")
            rewards.append(reward)
        if "seed" in keys:
            seeds.append(int(ep["seed"]))
        ends.append(length)
    for k, parts in obs_parts.items():
        if len({p.shape[1:] for p in parts}) > 1:
            raise ValueError(f"obs {k!r} feature shapes differ between episodes: {sorted({p.shape[1:] for p in parts})}")
    demos = Demonstrations(
        observations={k: np.concatenate(parts) for k, parts in obs_parts.items()},
        actions=np.concatenate(actions),
        episode_ends=np.cumsum(ends).astype(np.int64),
        rewards=np.concatenate(rewards) if rewards else None,
        episode_seeds=np.asarray(seeds, dtype=np.int64) if seeds else None,
    )
    validate_demonstrations(demos)
    return demos
