"""BimodalPoint: a 2-D point must go around a disc, left or right; averaging the two fails.

Geometry (world units)::

                 y
                 ^        goal ~ (0, 1) +- goal_noise, radius goal_radius
                 |   .-'''-.
          left   |  /       \\   right
          path   | | obstacle|  path          disc of radius obstacle_radius at (0, 0)
                 |  \\       /
                 |   '-...-'
                 +-------------> x
                      start ~ (0, -1) +- start_noise

* observation ``(4,)`` float32: ``[x, y, goal_x, goal_y]``, inside the workspace ``[-1.5, 1.5]^2``.
* action ``(2,)`` in ``[-1, 1]^2``: a velocity; the point moves by ``max_speed * action`` per step.
  Actions outside the box are clipped to it (as in Gymnasium's classic-control envs) and the
  position is clipped to the workspace (its walls).
* reward: ``+1`` on reaching the goal (success, episode terminates), ``-1`` when the step's
  segment touches the obstacle (failure, episode terminates, the point stays where it was),
  ``0`` otherwise. ``info["is_success"]`` and ``info["collision"]`` report the outcome.
* time limit: 100 steps (registered), about twice what the expert needs.

Why averaging fails (the point of the benchmark): the scripted expert circles the obstacle
clockwise or counter-clockwise with velocity ``+-t + c(r) r_hat`` (``t`` the unit tangent,
``r_hat`` the unit radial direction). The two modes' actions at any position have the same norm
and opposite tangential parts, so their mean ``c(r) r_hat / |v|`` is purely radial: a policy that
outputs the mean of the modes never changes its polar angle, stays below the obstacle (its polar
angle stays near -pi/2 while the goal is near +pi/2) and cannot succeed. A regression policy
trained on both modes approximates this mean near the start: it drives up into the obstacle or
stalls in front of it.
"""

from __future__ import annotations

from typing import Any, Literal

import gymnasium as gym
import numpy as np

__all__ = ["BIMODAL_ENV_ID", "BimodalPointEnv", "BimodalPointExpert"]

BIMODAL_ENV_ID = "rlox_dp/BimodalPoint-v0"
WORKSPACE_HALF_WIDTH = 1.5
START = np.array([0.0, -1.0])
GOAL = np.array([0.0, 1.0])


def _segment_distance_to_origin(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from the origin to segments ``a -> b``; ``a, b`` of shape ``(..., 2)`` -> ``(...)``."""
    d = b - a
    dd = np.sum(d * d, axis=-1)
    t = np.where(dd > 0, -np.sum(a * d, axis=-1) / np.where(dd > 0, dd, 1.0), 0.0)
    closest = a + np.clip(t, 0.0, 1.0)[..., None] * d
    return np.linalg.norm(closest, axis=-1)


class BimodalPointEnv(gym.Env):
    """A point that must reach a goal above a disc obstacle; see the module docstring.

    Args:
        render_mode: None or ``"rgb_array"`` (``(render_size, render_size, 3)`` uint8 frames).
        obstacle_radius: radius of the disc centred at the origin.
        goal_radius: success when the point is within this distance of the goal.
        max_speed: displacement per step for an action of norm 1 along an axis.
        start_noise, goal_noise: half-width of the uniform noise added to (0, -1) and (0, 1).
        render_size: side of rendered frames in pixels.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        render_mode: str | None = None,
        obstacle_radius: float = 0.5,
        goal_radius: float = 0.1,
        max_speed: float = 0.05,
        start_noise: float = 0.1,
        goal_noise: float = 0.1,
        render_size: int = 256,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode: expected None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        for name, value in [
            ("obstacle_radius", obstacle_radius),
            ("goal_radius", goal_radius),
            ("max_speed", max_speed),
        ]:
            if not value > 0:
                raise ValueError(f"{name}: expected a positive float, got {value!r}")
        if not 0 <= start_noise < 1 - obstacle_radius:
            raise ValueError(
                f"start_noise: expected 0 <= start_noise < 1 - obstacle_radius "
                f"= {1 - obstacle_radius}, got {start_noise!r}"
            )
        if not 0 <= goal_noise < 1 - obstacle_radius:
            raise ValueError(
                f"goal_noise: expected 0 <= goal_noise < 1 - obstacle_radius "
                f"= {1 - obstacle_radius}, got {goal_noise!r}"
            )
        self.render_mode = render_mode
        self.obstacle_radius = float(obstacle_radius)
        self.goal_radius = float(goal_radius)
        self.max_speed = float(max_speed)
        self.start_noise = float(start_noise)
        self.goal_noise = float(goal_noise)
        self.render_size = int(render_size)
        h = WORKSPACE_HALF_WIDTH
        self.observation_space = gym.spaces.Box(-h, h, shape=(4,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._position = START.copy()
        self._goal = GOAL.copy()
        self._pixel_xy: np.ndarray | None = None

    def _obs(self) -> np.ndarray:
        return np.concatenate([self._position, self._goal]).astype(np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a start and a goal position; returns ``(obs (4,), info)``."""
        super().reset(seed=seed)
        self._position = START + self.np_random.uniform(-self.start_noise, self.start_noise, 2)
        self._goal = GOAL + self.np_random.uniform(-self.goal_noise, self.goal_noise, 2)
        return self._obs(), {"is_success": False, "collision": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by ``max_speed * clip(action, -1, 1)``; ``action`` of shape ``(2,)``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"action: expected shape (2,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected finite values, got {action}")
        h = WORKSPACE_HALF_WIDTH
        target = np.clip(self._position + self.max_speed * np.clip(action, -1.0, 1.0), -h, h)
        collision = bool(_segment_distance_to_origin(self._position, target) < self.obstacle_radius)
        if not collision:
            self._position = target
        success = (not collision) and bool(
            np.linalg.norm(self._position - self._goal) <= self.goal_radius
        )
        reward = 1.0 if success else (-1.0 if collision else 0.0)
        info = {"is_success": success, "collision": collision}
        return self._obs(), reward, success or collision, False, info

    def render(self) -> np.ndarray | None:
        """``(render_size, render_size, 3)`` uint8 top-down frame, or None without render_mode."""
        if self.render_mode is None:
            return None
        n = self.render_size
        if self._pixel_xy is None:
            coords = (np.arange(n) + 0.5) / n * 2 * WORKSPACE_HALF_WIDTH - WORKSPACE_HALF_WIDTH
            self._pixel_xy = np.stack(np.meshgrid(coords, coords[::-1], indexing="xy"), axis=-1)
        xy = self._pixel_xy
        frame = np.full((n, n, 3), 245, dtype=np.uint8)
        frame[np.linalg.norm(xy, axis=-1) < self.obstacle_radius] = (120, 120, 120)
        frame[np.linalg.norm(xy - self._goal, axis=-1) < self.goal_radius] = (80, 190, 80)
        frame[np.linalg.norm(xy - self._position, axis=-1) < 0.04] = (40, 80, 220)
        return frame


class BimodalPointExpert:
    """Scripted expert for :class:`BimodalPointEnv`, one mode (left or right) per episode.

    Implements :class:`rlox_dp.envs.evaluation.EvalPolicy`. Each env's mode is drawn with
    probability 1/2 from ``rng`` when its episode starts (after :meth:`reset` for that env), unless
    ``mode`` fixes it. The expert circles the obstacle at ``orbit_radius`` (velocity: unit tangent
    plus ``gain * (orbit_radius - r)`` radially, normalized) until the straight segment to the
    goal clears the origin by ``clearance``, then heads straight to the goal at full speed.

    Args:
        rng: generator (or seed) for the per-episode mode draws.
        mode: ``"random"`` (both modes, 50/50), ``"left"`` or ``"right"``.
        orbit_radius, gain, clearance: controller parameters (defaults match the env defaults).
    """

    def __init__(
        self,
        rng: np.random.Generator | int,
        mode: Literal["random", "left", "right"] = "random",
        orbit_radius: float = 0.8,
        gain: float = 3.0,
        clearance: float = 0.6,
    ) -> None:
        if mode not in ("random", "left", "right"):
            raise ValueError(f"mode: expected 'random', 'left' or 'right', got {mode!r}")
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.mode = mode
        self.orbit_radius = float(orbit_radius)
        self.gain = float(gain)
        self.clearance = float(clearance)
        # (n_envs,) side per env: +1 right (counter-clockwise), -1 left, 0 = draw at next action.
        self._sides: np.ndarray | None = None

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the mode of the envs where ``env_mask`` (``(n_envs,)`` bool) is True (all if None)."""
        if env_mask is None:
            self._sides = None
            return
        if self._sides is None:  # no episode has started yet: modes are drawn on first use
            return
        env_mask = np.asarray(env_mask)
        if env_mask.shape != self._sides.shape or env_mask.dtype != np.bool_:
            raise ValueError(
                f"env_mask: expected a bool array of shape {self._sides.shape}, "
                f"got {env_mask.dtype} {env_mask.shape}"
            )
        self._sides[env_mask] = 0

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Map ``obs["state"]`` ``(n_envs, 4)`` to actions ``(n_envs, 2)`` in ``[-1, 1]``."""
        state = np.asarray(obs["state"], dtype=np.float64)
        if state.ndim != 2 or state.shape[1] != 4:
            raise ValueError(f"obs['state']: expected shape (n_envs, 4), got {state.shape}")
        n_envs = state.shape[0]
        if self._sides is None:
            self._sides = np.zeros(n_envs, dtype=np.int64)
        elif self._sides.shape[0] != n_envs:
            raise ValueError(
                f"obs['state']: got a batch of {n_envs} envs after {self._sides.shape[0]}; "
                "call reset() before changing the number of envs"
            )
        new = self._sides == 0
        if new.any():
            if self.mode == "random":
                self._sides[new] = self.rng.choice(np.array([-1, 1]), size=int(new.sum()))
            else:
                self._sides[new] = 1 if self.mode == "right" else -1
        return self.actions(state[:, :2], state[:, 2:], self._sides)

    def actions(self, position: np.ndarray, goal: np.ndarray, sides: np.ndarray) -> np.ndarray:
        """Actions ``(n, 2)`` for positions ``(n, 2)``, goals ``(n, 2)``, sides ``(n,)`` in {-1, +1}."""
        r = np.linalg.norm(position, axis=-1, keepdims=True)
        radial = position / np.maximum(r, 1e-9)
        tangent_ccw = np.stack([-radial[:, 1], radial[:, 0]], axis=-1)
        orbit = sides[:, None] * tangent_ccw + self.gain * (self.orbit_radius - r) * radial
        to_goal = goal - position
        visible = _segment_distance_to_origin(position, goal) > self.clearance
        direction = np.where(visible[:, None], to_goal, orbit)
        norm = np.linalg.norm(direction, axis=-1, keepdims=True)
        return (direction / np.maximum(norm, 1e-9)).astype(np.float32)
