r"""BimodalPoint: a 2-D point must pass a diamond obstacle on the left or on the right.

Geometry (world units)::

                  y
                  ^       goal (0, 1), radius goal_radius
                  |
                  /\
       W2_left * <obs> * W2_right       obstacle: |x| + |y| < obstacle_size (a diamond)
                  \/                    W2 = (+-(obstacle_size + side_margin), 0)
                  * W1                  W1 = (0, -(obstacle_size + split_gap)), the split point
                 /|\                    approach: straight paths from the start region
          start region (0, -1) + (U(+-start_noise_x), U(+-start_noise_y))

* observation ``(2,)`` float32: the position, inside the workspace ``[-1.5, 1.5]^2``.
* action ``(2,)`` in ``[-1, 1]^2``: a velocity; the point moves by ``max_speed * action`` per step.
  Actions outside the box are clipped to it (as in Gymnasium's classic-control envs) and the
  position is clipped to the workspace (its walls).
* reward: ``+1`` on reaching the goal (success, episode terminates), ``-1`` when the step's
  segment touches the obstacle (failure, episode terminates, the point stays where it was),
  ``0`` otherwise. ``info["is_success"]`` and ``info["collision"]`` report the outcome.
* time limit: 100 steps (registered), about twice what the expert needs.

The scripted expert (:class:`~rlox_dp.experts.bimodal.BimodalPointExpert`) drives straight to the split point W1 just
below the obstacle's bottom corner, then, with a side drawn per episode, to W2_left or W2_right
and from there to the goal: a piecewise-straight path of about 50 steps. Both sides share the
approach, a fan of states between the start region and W1 where the side cannot be inferred.

Why averaging fails (the point of the benchmark): up to W1 the two sides act identically; after
it they head for mirror-image waypoints, so the mean of their actions has a positive vertical
part and a lateral part pointing toward the axis ``x = 0`` (zero on it). A policy outputting
the mean of the sides therefore climbs from W1 along the axis into the obstacle's bottom corner,
every episode. A regression (MSE) policy trained on both sides learns that mean on the shared
fan (``benchmarks/multimodal.py`` measures how often it collides), while the expert always succeeds.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["BIMODAL_ENV_ID", "BimodalPointEnv"]

BIMODAL_ENV_ID = "rlox_dp/BimodalPoint-v0"
WORKSPACE_HALF_WIDTH = 1.5
START = np.array([0.0, -1.0])
GOAL = np.array([0.0, 1.0])


def min_l1_norm_on_segment(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``min_t |p(t)|_1`` over the segments ``p(t) = a + t (b - a)``, ``t in [0, 1]``.

    ``a, b`` of shape ``(..., 2)`` -> ``(...)``. The L1 norm is convex and piecewise linear
    along a segment, so its minimum is at an end point or where a coordinate crosses zero.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        crossings = np.where(d != 0, -a / d, 0.0)  # (..., 2): t where x = 0 and where y = 0
    ts = np.concatenate([np.zeros_like(a[..., :1]), np.ones_like(a[..., :1]), crossings], -1)
    ts = np.clip(ts, 0.0, 1.0)  # (..., 4)
    points = a[..., None, :] + ts[..., :, None] * d[..., None, :]  # (..., 4, 2)
    return np.abs(points).sum(-1).min(-1)


class BimodalPointEnv(gym.Env):
    """A point that must reach a goal above a diamond obstacle; see the module docstring.

    Args:
        render_mode: None or ``"rgb_array"`` (``(render_size, render_size, 3)`` uint8 frames).
        obstacle_size: the obstacle is ``|x| + |y| < obstacle_size``.
        goal_radius: success when the point is within this distance of the goal (0, 1).
        max_speed: displacement per step for an action of 1 along an axis.
        start_noise_x, start_noise_y: half-widths of the uniform noise on the start (0, -1).
        render_size: side of rendered frames in pixels.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        render_mode: str | None = None,
        obstacle_size: float = 0.5,
        goal_radius: float = 0.1,
        max_speed: float = 0.05,
        start_noise_x: float = 0.3,
        start_noise_y: float = 0.1,
        render_size: int = 256,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode: expected None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        for name, value, high in [
            ("obstacle_size", obstacle_size, 0.8),
            ("goal_radius", goal_radius, 0.5),
            ("max_speed", max_speed, 0.5),
            ("start_noise_x", start_noise_x, 0.4),
            ("start_noise_y", start_noise_y, 0.2),
        ]:
            is_noise = name.startswith("start_noise")
            if not ((value >= 0 if is_noise else value > 0) and value <= high):
                bound = "[0" if is_noise else "(0"
                raise ValueError(f"{name}: expected a value in {bound}, {high}], got {value!r}")
        self.render_mode = render_mode
        self.obstacle_size = float(obstacle_size)
        self.goal_radius = float(goal_radius)
        self.max_speed = float(max_speed)
        self.start_noise = np.array([start_noise_x, start_noise_y], dtype=np.float64)
        self.render_size = int(render_size)
        h = WORKSPACE_HALF_WIDTH
        self.observation_space = gym.spaces.Box(-h, h, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._position = START.copy()
        self._pixel_xy: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Draw a start position; returns ``(obs (2,), info)``."""
        super().reset(seed=seed)
        self._position = START + self.np_random.uniform(-1.0, 1.0, 2) * self.start_noise
        return self._position.astype(np.float32), {"is_success": False, "collision": False}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by ``max_speed * clip(action, -1, 1)``; ``action`` of shape ``(2,)``."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise ValueError(f"action: expected shape (2,), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected finite values, got {action}")
        h = WORKSPACE_HALF_WIDTH
        target = np.clip(self._position + self.max_speed * np.clip(action, -1.0, 1.0), -h, h)
        collision = bool(min_l1_norm_on_segment(self._position, target) < self.obstacle_size)
        if not collision:
            self._position = target
        success = (not collision) and bool(np.linalg.norm(self._position - GOAL) <= self.goal_radius)
        reward = 1.0 if success else (-1.0 if collision else 0.0)
        info = {"is_success": success, "collision": collision}
        return self._position.astype(np.float32), reward, success or collision, False, info

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
        frame[np.abs(xy).sum(-1) < self.obstacle_size] = (120, 120, 120)
        frame[np.linalg.norm(xy - GOAL, axis=-1) < self.goal_radius] = (80, 190, 80)
        frame[np.linalg.norm(xy - self._position, axis=-1) < 0.04] = (40, 80, 220)
        return frame
