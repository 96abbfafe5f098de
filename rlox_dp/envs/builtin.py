"""The env specs rlox_dp ships (registered when :mod:`rlox_dp.envs` is imported).

* ``gym_pusht/PushT-v0``: made by :func:`~rlox_dp.envs.pusht.make_pusht_env`; observation modes
  ``"keypoints"`` (default), ``"state"``, ``"image"`` (chosen with ``config={"obs": ...}``, and
  ``"image"`` for a LeRobot dataset with video); demonstration files in the Diffusion Policy zarr
  layout (:func:`~rlox_dp.envs.pusht.load_pusht_demonstrations`); default demonstrations from
  the MPC expert (:func:`rlox_dp.experts.pusht.default_pusht_demonstrations`); DAgger's labelled
  episodes stored in that layout; presets.
* ``Pendulum-v1``, ``InvertedDoublePendulum-v5``: Gymnasium's envs with their presets; their
  SAC experts are registered in :mod:`rlox_dp.experts`.

Other envs (``MountainCarContinuous-v0``, ``rlox_dp/BimodalPoint-v0``, any Gymnasium id) use
:meth:`~rlox_dp.envs.spec.EnvSpec.generic`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rlox_dp.buffers import Demonstrations
from rlox_dp.envs.pusht import (
    OBS_MODES,
    PUSHT_ENV_ID,
    block_keypoints,
    load_pusht_demonstrations,
    make_pusht_env,
)
from rlox_dp.envs.spec import EnvSpec, register_env
from rlox_dp.presets import (
    INVERTED_DOUBLE_PENDULUM_PRESETS,
    PENDULUM_PRESETS,
    PUSHT_IMAGE_PRESETS,
    PUSHT_PRESETS,
)

__all__ = ["INVERTED_DOUBLE_PENDULUM", "PENDULUM", "PUSHT"]

_PUSHT_DEFAULT_OBS_MODE = "keypoints"


def _load_pusht(path: Path, obs_mode: str | None, obs_keys: Sequence[str]) -> Demonstrations:
    return load_pusht_demonstrations(path, obs_mode=obs_mode or _PUSHT_DEFAULT_OBS_MODE)


def _pusht_mpc_demos(obs_mode: str | None, n_episodes: int, cache_dir: Path | None,
                     progress: bool) -> Demonstrations:
    from rlox_dp.experts.pusht import default_pusht_demonstrations

    return default_pusht_demonstrations(obs_mode or _PUSHT_DEFAULT_OBS_MODE, n_episodes=n_episodes,
                                        cache_dir=cache_dir, progress=progress)


def _pusht_dataset_columns(sim_states: np.ndarray,
                           observations: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The human dataset's columns: ``state`` ``(N, 5)`` (agent x, y, block x, y, angle),
    ``keypoint`` ``(N, 9, 2)`` and ``img`` ``(N, 96, 96, 3)`` when the policy saw images."""
    from rlox_dp.experts.labelling import pusht_raw_state

    raw = pusht_raw_state(sim_states)
    columns = {"state": raw, "keypoint": block_keypoints(raw[:, 2:5]).astype(np.float32)}
    if "image" in observations:
        columns["img"] = np.moveaxis(observations["image"], 1, -1).astype(np.float32)
    return columns


PUSHT = register_env(EnvSpec(
    PUSHT_ENV_ID,
    make=make_pusht_env,
    obs_modes=(_PUSHT_DEFAULT_OBS_MODE, *(m for m in OBS_MODES if m != _PUSHT_DEFAULT_OBS_MODE)),
    video_obs_mode="image",
    load_demos=_load_pusht,
    default_demos=_pusht_mpc_demos,
    dataset_columns=_pusht_dataset_columns,
    presets=PUSHT_PRESETS,
    obs_mode_presets={"image": PUSHT_IMAGE_PRESETS},
))
PENDULUM = register_env(EnvSpec("Pendulum-v1", presets=PENDULUM_PRESETS))
INVERTED_DOUBLE_PENDULUM = register_env(
    EnvSpec("InvertedDoublePendulum-v5", presets=INVERTED_DOUBLE_PENDULUM_PRESETS)
)
