"""PushT (gym-pusht) with observations identical to the Diffusion Policy demonstrations.

The adapter builds every observation from one float64 state vector
``[agent_x, agent_y, block_x, block_y, block_angle]`` (pixels, radians in ``[0, 2*pi)``), read
either from the env's pymunk bodies or from a dataset's ``data/state`` row, with the same code
path; so after :func:`set_pusht_state` the env emits bit-for-bit what :func:`pusht_observations`
makes of that dataset row (images aside, see below). Observation modes:

- ``"state"``: ``{"state": (6,)}`` float32 = agent x, y, block x, y, sin(angle), cos(angle).
- ``"keypoints"``: ``{"state": (20,)}`` float32 = 9 block keypoints ``(x, y)`` flattened, then the
  agent position: the paper's low-dimensional PushT observation (``PushTLowdimDataset`` order).
- ``"image"``: ``{"image": (3, H, W)`` uint8 CHW, ``"agent_pos": (2,)`` float32``}``, H = W = 96.

Keypoints are computed from the state, not read from ``data/keypoint``: over the 25,650 recorded
steps the two agree to float32 precision on 77 % of the steps and within 0.035 px on 99 %, but a
few steps where the block moves fast carry keypoints off by up to 2.05 px, which no env state
reproduces. The dataset images were rendered by the original code (probably an older pygame): the
env's renders differ on polygon-edge pixels only (at most 0.6 % of the pixels differ, mean
absolute difference at most 0.2 on the 0..255 scale, measured on every 7th step).

This module reads gym-pusht's ``PushTEnv`` internals (``agent``, ``block``, ``space``,
``_get_coverage``, ``_draw``, ``_get_img``) of gym-pusht 0.1.x: its own ``reset_to_state`` sets the
block position before the angle, which moves the block by tens of pixels (the rotation is about
the centre of gravity), and its ``environment_state_agent_pos`` observation uses the 8 polygon
vertices, not the paper's 9 keypoints.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from rlox_dp.buffers.demonstrations import Demonstrations

__all__ = [
    "BLOCK_KEYPOINTS_LOCAL",
    "OBS_MODES",
    "PUSHT_ENV_ID",
    "PushTAdapter",
    "PushTObsMode",
    "block_keypoints",
    "load_pusht_demonstrations",
    "make_pusht_env",
    "observe_pusht",
    "pusht_observations",
    "replay_episode",
    "set_pusht_state",
]

PUSHT_ENV_ID = "gym_pusht/PushT-v0"
PushTObsMode = Literal["state", "keypoints", "image"]
OBS_MODES: tuple[str, ...] = ("state", "keypoints", "image")

BLOCK_KEYPOINTS_LOCAL = np.array(
    [
        [9.269786713763871, 90.04097352393619],
        [-60.983472364471474, -1.1867297607997276],
        [60.91275557727772, -1.3933642242328201],
        [-0.2705034390160016, 25.54362499146542],
        [-14.064927576212233, 122.81585355412153],
        [39.002738500170146, 32.857404276587566],
        [-39.966414424694534, 32.729655446429945],
        [-16.82434437939744, 62.86317892234989],
        [23.54146122024909, -1.7002881094626152],
    ]
)
"""``(9, 2)`` block keypoints in the block's body frame (pixels), in the dataset's order.

The original repo's ``PymunkKeypointManager.create_from_pusht_env`` draws the T at the origin,
takes its non-white pixels and picks 9 of them by farthest-point sampling, then adds a
uniform [0, 1) shift, all from ``np.random.default_rng(0)``; these are its outputs
(``tests/test_pusht.py`` re-derives them the same way)."""


def _check_obs_mode(obs_mode: str) -> None:
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode: expected one of {OBS_MODES}, got {obs_mode!r}")


def block_keypoints(block_pose: np.ndarray) -> np.ndarray:
    """Place the 9 block keypoints at a block pose.

    Args:
        block_pose: ``(..., 3)`` = block x, y (body origin, pixels) and angle (radians), as in
            ``data/state[:, 2:5]``.

    Returns:
        ``(..., 9, 2)`` float64 keypoints ``R(angle) @ BLOCK_KEYPOINTS_LOCAL + (x, y)``.
    """
    pose = np.asarray(block_pose, dtype=np.float64)
    if pose.ndim < 1 or pose.shape[-1] != 3:
        raise ValueError(f"block_pose: expected shape (..., 3), got {pose.shape}")
    cos, sin = np.cos(pose[..., 2:3]), np.sin(pose[..., 2:3])  # (..., 1)
    local_x, local_y = BLOCK_KEYPOINTS_LOCAL[:, 0], BLOCK_KEYPOINTS_LOCAL[:, 1]
    x = cos * local_x - sin * local_y + pose[..., 0:1]
    y = sin * local_x + cos * local_y + pose[..., 1:2]
    return np.stack([x, y], axis=-1)


def _low_dim_observations(state: np.ndarray, obs_mode: str) -> dict[str, np.ndarray]:
    """``(..., 5)`` float64 states -> the adapter's non-image observations (float32)."""
    agent_pos = state[..., 0:2]
    if obs_mode == "state":
        angle = state[..., 4:5]
        vec = np.concatenate([agent_pos, state[..., 2:4], np.sin(angle), np.cos(angle)], axis=-1)
        return {"state": vec.astype(np.float32)}
    if obs_mode == "keypoints":
        kps = block_keypoints(state[..., 2:5]).reshape(*state.shape[:-1], 18)
        return {"state": np.concatenate([kps, agent_pos], axis=-1).astype(np.float32)}
    return {"agent_pos": agent_pos.astype(np.float32)}


def _image_to_uint8_chw(img: np.ndarray, name: str) -> np.ndarray:
    """``(..., H, W, 3)`` integral values in [0, 255] -> ``(..., 3, H, W)`` uint8; no rounding."""
    img = np.asarray(img)
    if img.ndim < 3 or img.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape (..., H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        if img.size and (img.min() < 0 or img.max() > 255 or not np.all(img == np.round(img))):
            raise ValueError(f"{name}: expected integral values in [0, 255] (0..255 scale)")
        img = img.astype(np.uint8)
    return np.ascontiguousarray(np.moveaxis(img, -1, -3))


def pusht_observations(raw: Mapping[str, np.ndarray], obs_mode: str) -> dict[str, np.ndarray]:
    """Convert dataset fields to exactly what the env adapter emits for those states.

    Args:
        raw: dataset fields: ``"state"`` ``(..., 5)`` (always needed) and, for ``"image"``,
            ``"img"`` ``(..., H, W, 3)`` with integral values in 0..255 (any dtype).
        obs_mode: one of :data:`OBS_MODES`.

    Returns:
        ``"state"``/``"keypoints"``: ``{"state": (..., 6 or 20) float32}``;
        ``"image"``: ``{"image": (..., 3, H, W) uint8, "agent_pos": (..., 2) float32}``.
    """
    _check_obs_mode(obs_mode)
    needed = ("state", "img") if obs_mode == "image" else ("state",)
    for key in needed:
        if key not in raw:
            raise KeyError(f"raw: obs_mode {obs_mode!r} needs field {key!r}, got {sorted(raw)}")
    state = np.asarray(raw["state"], dtype=np.float64)
    if state.ndim < 1 or state.shape[-1] != 5:
        raise ValueError(f"raw['state']: expected shape (..., 5), got {state.shape}")
    obs = _low_dim_observations(state, obs_mode)
    if obs_mode == "image":
        image = _image_to_uint8_chw(raw["img"], "raw['img']")
        if image.shape[:-3] != state.shape[:-1]:
            raise ValueError(
                f"raw: 'img' batch shape {image.shape[:-3]} != 'state' batch shape "
                f"{state.shape[:-1]}"
            )
        obs["image"] = image
    return obs


def _pusht_core(env: gym.Env) -> Any:
    """Return the gym-pusht ``PushTEnv`` under ``env``, checking it has been reset."""
    from gym_pusht.envs.pusht import PushTEnv

    core = env.unwrapped
    if not isinstance(core, PushTEnv):
        raise TypeError(f"env: expected a gym-pusht PushTEnv underneath, got {type(core).__name__}")
    if getattr(core, "space", None) is None:
        raise RuntimeError("env: call env.reset() before reading or setting the PushT state")
    return core


def _core_state(core: Any) -> np.ndarray:
    """``(5,)`` float64 agent x, y, block x, y, angle in [0, 2*pi) of a ``PushTEnv``."""
    agent, block = core.agent.position, core.block.position
    return np.array([agent[0], agent[1], block[0], block[1], core.block.angle % (2 * np.pi)])


class PushTAdapter(gym.Wrapper):
    """gym-pusht PushT with the observations of :data:`OBS_MODES` and coverage in ``info``.

    ``info`` carries ``"coverage"`` (float, fraction of the goal T covered by the block) and
    ``"is_success"`` (bool, ``coverage > 0.95``, the same test gym-pusht uses for ``terminated``)
    after ``reset`` and every ``step``. Actions are gym-pusht's: ``(2,)`` target positions of the
    agent in pixels, ``Box(0, 512)``.
    """

    def __init__(self, env: gym.Env, obs_mode: str = "keypoints") -> None:
        _check_obs_mode(obs_mode)
        super().__init__(env)
        self.obs_mode = obs_mode
        core = env.unwrapped
        unbounded = {"low": -np.inf, "high": np.inf, "dtype": np.float32}
        if obs_mode == "state":
            low = np.array([-np.inf] * 4 + [-1.0, -1.0], dtype=np.float32)
            spaces = {"state": gym.spaces.Box(low=low, high=-low, dtype=np.float32)}
        elif obs_mode == "keypoints":
            spaces = {"state": gym.spaces.Box(shape=(20,), **unbounded)}
        else:
            shape = (3, core.observation_height, core.observation_width)
            spaces = {
                "image": gym.spaces.Box(low=0, high=255, shape=shape, dtype=np.uint8),
                "agent_pos": gym.spaces.Box(shape=(2,), **unbounded),
            }
        self.observation_space = gym.spaces.Dict(spaces)

    def observe(self) -> dict[str, np.ndarray]:
        """Observation of the env's current state (see the module docstring for shapes)."""
        core = _pusht_core(self.env)
        obs = _low_dim_observations(_core_state(core), self.obs_mode)
        if self.obs_mode == "image":
            w, h = core.observation_width, core.observation_height
            img = core._get_img(core._draw(), width=w, height=h, render_action=False)
            obs["image"] = _image_to_uint8_chw(img, "rendered image")
        return obs

    def _with_coverage(self, info: dict[str, Any]) -> dict[str, Any]:
        core = _pusht_core(self.env)
        coverage = float(info["coverage"]) if "coverage" in info else float(core._get_coverage())
        return {**info, "coverage": coverage, "is_success": coverage > core.success_threshold}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Reset gym-pusht (random agent and block pose from ``seed``); return (obs, info).

        ``options`` go to gym-pusht unchanged (its ``reset_to_state`` misplaces the block, see
        the module docstring); use :func:`set_pusht_state` after ``reset`` for exact states.
        """
        _, info = self.env.reset(seed=seed, options=options)
        return self.observe(), self._with_coverage(info)

    def step(
        self, action: np.ndarray
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Move the agent towards ``action`` ``(2,)`` for 0.1 s; return the Gymnasium 5-tuple."""
        _, reward, terminated, truncated, info = self.env.step(action)
        return self.observe(), float(reward), terminated, truncated, self._with_coverage(info)


def make_pusht_env(
    obs_mode: str = "keypoints",
    *,
    render_mode: str | None = None,
    max_episode_steps: int | None = 300,
    **kwargs: Any,
) -> PushTAdapter:
    """Create ``gym_pusht/PushT-v0`` wrapped in :class:`PushTAdapter`.

    Args:
        obs_mode: one of :data:`OBS_MODES`.
        render_mode: gym-pusht's ``render()`` mode (``"rgb_array"``, ``"human"`` or None);
            image observations are rendered whatever it is.
        max_episode_steps: time limit (None: the registered 300 steps, as ``gym.make``).
        **kwargs: passed to gym-pusht's ``PushTEnv`` (``block_cog``, ``damping``,
            ``observation_width``, ...), except ``obs_type`` which the adapter owns.
    """
    if "obs_type" in kwargs:
        raise ValueError(
            f"obs_type: set by the adapter; choose obs_mode from {OBS_MODES} instead "
            f"(got obs_type={kwargs['obs_type']!r})"
        )
    _check_obs_mode(obs_mode)
    if max_episode_steps is not None and (
        not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps <= 0
    ):
        raise ValueError(
            f"max_episode_steps: expected a positive int or None, got {max_episode_steps!r}"
        )
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # pygame's import banner
    import gym_pusht  # noqa: F401  (registers gym_pusht/PushT-v0)

    env = gym.make(
        PUSHT_ENV_ID,
        obs_type="state",
        render_mode=render_mode,
        max_episode_steps=max_episode_steps,
        **kwargs,
    )
    return PushTAdapter(env, obs_mode=obs_mode)


def observe_pusht(env: gym.Env) -> dict[str, np.ndarray]:
    """Observation the :class:`PushTAdapter` inside ``env`` emits for the current state."""
    return env.get_wrapper_attr("observe")()


def set_pusht_state(env: gym.Env, state: np.ndarray) -> None:
    """Put a (reset) PushT env exactly into a recorded state, agent and block at rest.

    The block's angle is set before its position (pymunk rotates about the centre of gravity),
    so ``block.position`` equals ``state[2:4]`` exactly; no physics step is taken. Velocities
    are zeroed, as at the start of a recorded episode. The time-limit counter is not touched.

    Args:
        env: a PushT env (an adapter or gym-pusht's env, possibly wrapped), already reset.
        state: ``(5,)`` agent x, y, block x, y, block angle (a ``data/state`` row).
    """
    state = np.asarray(state, dtype=np.float64)
    if state.shape != (5,) or not np.all(np.isfinite(state)):
        raise ValueError(f"state: expected 5 finite values, got shape {state.shape}: {state}")
    core = _pusht_core(env)
    core.agent.position = (state[0], state[1])
    core.agent.velocity = (0.0, 0.0)
    core.block.angle = state[4]
    core.block.position = (state[2], state[3])
    core.block.velocity = (0.0, 0.0)
    core.block.angular_velocity = 0.0
    for body in (core.agent, core.block):  # refresh the shapes' cached world vertices
        core.space.reindex_shapes_for_body(body)


def replay_episode(env: gym.Env, states: np.ndarray, actions: np.ndarray) -> dict[str, Any]:
    """Replay recorded actions from an episode's exact initial state.

    The env is reset, put into ``states[0]`` and stepped with every action regardless of
    ``terminated``/``truncated`` (PushT episodes are shorter than the 300-step limit).

    Args:
        env: a PushT env built by :func:`make_pusht_env`.
        states: ``(L, 5)`` the episode's recorded states (only ``states[0]`` is used).
        actions: ``(L, 2)`` the recorded actions.

    Returns:
        ``"coverage"``: ``(L,)`` coverage after each action; ``"final_coverage"`` and
        ``"max_coverage"``: floats; ``"states"``: ``(L, 5)`` replayed states after each action
        (compare with ``states[1:]`` to see how far the replay drifts).
    """
    states, actions = np.asarray(states), np.asarray(actions)
    if states.ndim != 2 or states.shape[1] != 5 or states.shape[0] < 1:
        raise ValueError(f"states: expected shape (L, 5) with L >= 1, got {states.shape}")
    if actions.shape != (states.shape[0], 2):
        raise ValueError(f"actions: expected shape ({states.shape[0]}, 2), got {actions.shape}")
    env.reset(seed=0)
    set_pusht_state(env, states[0])
    core = _pusht_core(env)
    coverage = np.empty(len(actions))
    replayed = np.empty((len(actions), 5))
    for t, action in enumerate(actions):
        _, _, _, _, info = env.step(action)
        coverage[t] = info["coverage"]
        replayed[t] = _core_state(core)
    return {
        "coverage": coverage,
        "final_coverage": float(coverage[-1]),
        "max_coverage": float(coverage.max()),
        "states": replayed,
    }


def load_pusht_demonstrations(path: str | Path, obs_mode: str = "keypoints") -> Demonstrations:
    """Load the Diffusion Policy PushT zarr (``pusht_cchi_v7_replay.zarr`` layout).

    Only ``data/state`` (and ``data/img`` for images) are read besides the actions, through
    :func:`rlox_dp.buffers.loaders.load_demonstrations`.

    Args:
        path: the zarr directory (``data/state``, ``data/action``, ``data/img`` ``(N, H, W, 3)``
            for images, ``meta/episode_ends``).
        obs_mode: one of :data:`OBS_MODES`; observations are those of :func:`pusht_observations`.

    Returns:
        :class:`Demonstrations` with ``(N, *obs_shape)`` observations, ``(N, 2)`` float32 actions
        and ``(E,)`` episode ends.
    """
    from rlox_dp.buffers.loaders import load_demonstrations

    _check_obs_mode(obs_mode)
    image = obs_mode == "image"
    raw = load_demonstrations(
        path,
        obs_keys=["state", "img"] if image else ["state"],
        channels_last_keys=["img"] if image else [],
    )
    state = np.asarray(raw.observations["state"], dtype=np.float64)
    if state.ndim != 2 or state.shape[1] != 5:
        raise ValueError(f"{path}: data/state must have shape (N, 5), got {state.shape}")
    obs = _low_dim_observations(state, obs_mode)
    if image:
        obs["image"] = raw.observations["img"]  # (N, 3, H, W) uint8, as _image_to_uint8_chw
    return dataclasses.replace(
        raw,
        observations=obs,
        actions=np.asarray(raw.actions, dtype=np.float32),
        metadata={
            **raw.metadata,
            "source": str(path),
            "env_id": PUSHT_ENV_ID,
            "obs_mode": obs_mode,
        },
    )
