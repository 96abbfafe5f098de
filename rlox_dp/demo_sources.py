"""Where a run's demonstrations come from, and the checks that they fit the env.

    demos, demo_info = load_demonstrations_for("Pendulum-v1", None, obs_keys=["state"], obs_mode=None,
                                               n_demos=50, cache_dir=None, progress=True)

The env's :class:`~rlox_dp.envs.spec.EnvSpec` knows its files and its default demonstrations.
One function answers "which demonstrations does this run train on" for every kind of source a
:class:`rlox_dp.Trainer` accepts: :class:`Demonstrations` in memory, ``None`` (the env's built-in
expert, trained once and cached; PushT: the MPC expert's dataset), a LeRobotDataset v3 folder,
the PushT human-demonstration zarr, or any ``.zarr`` / ``.npz`` file in rlox_dp's layout.
:func:`check_demonstrations` then compares them with the env's spaces.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from rlox_dp.buffers import Demonstrations
from rlox_dp.envs.spec import env_spec

__all__ = ["MAX_OUT_OF_BOUNDS_FRACTION", "check_demonstrations", "load_demonstrations_for"]

logger = logging.getLogger("rlox_dp")

#: fraction of demonstration action values outside the env's action Box above which the
#: demonstrations are refused (units or normalization mismatch); below it, a warning.
MAX_OUT_OF_BOUNDS_FRACTION = 0.01


def load_demonstrations_for(
    env_id: str,
    demos: str | os.PathLike | Demonstrations | None,
    obs_keys: Sequence[str],
    obs_mode: str | None,
    n_demos: int,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> tuple[Demonstrations, dict[str, float]]:
    """The demonstrations ``demos`` names for env ``env_id``.

    Args:
        env_id: the Gymnasium env id the demonstrations are for.
        demos: :class:`Demonstrations` (returned as they are); ``None`` for the env's built-in
            expert (PushT: the MPC expert's dataset in ``obs_mode``); a path to a LeRobotDataset
            folder, to the PushT zarr (PushT envs) or to a ``.zarr`` / ``.npz`` file.
        obs_keys: the env's observation keys (what is read from a file).
        obs_mode: the env's observation mode (PushT's ``"image"`` ...; its spec's default when
            ``None``); envs with one kind of observation ignore it.
        n_demos: episodes collected from a built-in expert.
        cache_dir: where experts and their demonstrations are cached (default
            ``$RLOX_DP_CACHE`` or ``~/.cache/rlox_dp``).
        progress: show progress bars while an expert trains or collects.

    Returns:
        ``(demonstrations, demo_info)``: observations ``{key: (N, *obs_shape)}``, actions
        ``(N, D_act)``, episode ends ``(E,)``; ``demo_info`` holds the built-in SB3 expert's
        ``expert_*`` numbers (its return ...) and is empty for every other source.

    Raises:
        TypeError: ``demos`` is none of the above.
    """
    if isinstance(demos, Demonstrations):
        return demos, {}
    spec = env_spec(env_id)
    if demos is None:
        loaded = spec.default_demonstrations(obs_mode, n_demos, cache_dir, progress)
        info = {k: float(v) for k, v in loaded.metadata.items()
                if k.startswith("expert_") and isinstance(v, (int, float))}
        return loaded, info
    if isinstance(demos, (str, os.PathLike)):
        return spec.load_demonstrations(demos, obs_mode, obs_keys), {}
    raise TypeError(
        "demos must be a path (.zarr/.npz, a LeRobot dataset folder), Demonstrations, "
        f"DemonstrationBuffer or None, got {type(demos).__name__}"
    )


def check_demonstrations(demos: Demonstrations, observation_space: gym.spaces.Dict,
                         action_space: gym.spaces.Box, env_id: str) -> None:
    """Refuse demonstrations whose keys or per-step shapes differ from the env's spaces; warn
    about actions outside the action Box (refused above :data:`MAX_OUT_OF_BOUNDS_FRACTION`).

    Raises:
        ValueError: naming the key (or the actions), what the env expects and what was given.
    """
    obs_keys = set(observation_space.spaces)
    if set(demos.observations) != obs_keys:
        raise ValueError(
            f"demos observation keys {sorted(demos.observations)} do not match env {env_id!r} "
            f"observation keys {sorted(obs_keys)}"
        )
    for key, space in observation_space.spaces.items():
        got = tuple(demos.observations[key].shape[1:])
        if got != tuple(space.shape):
            raise ValueError(
                f"demos observation {key!r} has per-step shape {got}, env {env_id!r} "
                f"expects {tuple(space.shape)}"
            )
    if tuple(demos.actions.shape[1:]) != tuple(action_space.shape):
        raise ValueError(
            f"demos actions have per-step shape {tuple(demos.actions.shape[1:])}, env "
            f"{env_id!r} expects {tuple(action_space.shape)}"
        )
    _check_action_bounds(demos.actions, action_space, env_id)


def _check_action_bounds(actions: Any, action_space: gym.spaces.Box, env_id: str) -> None:
    """Warn about actions ``(N, D_act)`` outside the action Box (the env clips what the policy
    learns from them); refuse when more than :data:`MAX_OUT_OF_BOUNDS_FRACTION` are."""
    if not (isinstance(actions, np.ndarray) and actions.size and actions.dtype.kind in "fiu"):
        return  # empty or not numeric: DemonstrationBuffer's validation reports it
    low, high = action_space.low, action_space.high
    slack = 1e-6 * np.where(np.isfinite(high - low), high - low, 0.0) + 1e-6  # float rounding
    outside = (actions < low - slack) | (actions > high + slack)
    fraction = float(outside.mean())  # NaN compares False: validation reports it later
    if fraction == 0.0:
        return
    dims = np.flatnonzero(outside.any(axis=0)).tolist()
    text = (f"{fraction:.2%} of the demonstration action values lie outside the action space of env "
            f"{env_id!r} (low {low.tolist()}, high {high.tolist()}; out of bounds in dimensions "
            f"{dims}; the actions range from {actions.min(axis=0).tolist()} to {actions.max(axis=0).tolist()})")
    if fraction > MAX_OUT_OF_BOUNDS_FRACTION:
        raise ValueError(f"{text}: more than {MAX_OUT_OF_BOUNDS_FRACTION:.0%}, which suggests "
                         "other units or a normalization; convert or clip the demonstrations")
    logger.warning("%s; the env clips executed actions to its bounds", text)
