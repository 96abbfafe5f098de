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

The scripted expert (:class:`BimodalPointExpert`) drives straight to the split point W1 just
below the obstacle's bottom corner, then, with a side drawn per episode, to W2_left or W2_right
and from there to the goal: a piecewise-straight path of about 50 steps. Both sides share the
approach, a fan of states between the start region and W1 where the side cannot be inferred.

Why averaging fails (the point of the benchmark): up to W1 the two sides act identically; after
it they head for mirror-image waypoints, so the mean of their actions has a positive vertical
part and a lateral part pointing toward the axis ``x = 0`` (zero on it). A policy outputting
the mean of the sides therefore climbs from W1 along the axis into the obstacle's bottom corner,
every episode. A regression (MSE) policy trained on both sides learns that mean on the shared
fan: measured here (100 demos, 2x256 MLPs, 3 training seeds), MSE policies predicting single
actions or chunks of 8 or 16 collided in 66-100% of 50 episodes, while the expert succeeds always.
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


class BimodalPointExpert:
    """Scripted expert for :class:`BimodalPointEnv`, one side (left or right) per episode.

    Implements :class:`rlox_dp.evaluation.EvalPolicy`. Each env's side is drawn with
    probability 1/2 from ``rng`` when its episode starts (after :meth:`reset` for that env), unless
    ``mode`` fixes it or ties it to the start (``"nearest"``: the side of the start's x, as DAgger's
    labels from a visited state use, :mod:`rlox_dp.experts.labelling`). Below the split point W1 the expert heads for W1 (slowing down on the last
    step to land on it exactly); above it, for its side's waypoint W2; once the straight segment
    to the goal clears the obstacle by ``visibility_margin`` (in L1 distance), for the goal.

    Args:
        rng: generator (or seed) for the per-episode side draws.
        mode: ``"random"`` (both sides, 50/50), ``"left"``, ``"right"`` or ``"nearest"`` (the
            side of the episode's first position: x < 0 left, x > 0 right, x = 0 drawn 50/50).
        obstacle_size, max_speed: must match the env's.
        split_gap, side_margin, visibility_margin: W1 is ``split_gap`` below the obstacle's
            bottom corner, W2 is ``side_margin`` beside its side corner.
    """

    def __init__(
        self,
        rng: np.random.Generator | int,
        mode: Literal["random", "left", "right", "nearest"] = "random",
        obstacle_size: float = 0.5,
        max_speed: float = 0.05,
        split_gap: float = 0.1,
        side_margin: float = 0.15,
        visibility_margin: float = 0.1,
    ) -> None:
        if mode not in ("random", "left", "right", "nearest"):
            raise ValueError(f"mode: expected 'random', 'left', 'right' or 'nearest', got {mode!r}")
        if not 0 < visibility_margin < side_margin:
            raise ValueError(
                f"visibility_margin: expected 0 < visibility_margin < side_margin = {side_margin}"
                f" (the goal must be visible from W2), got {visibility_margin!r}"
            )
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.mode = mode
        self.obstacle_size = float(obstacle_size)
        self.max_speed = float(max_speed)
        self.split = np.array([0.0, -(obstacle_size + split_gap)])
        self.side_x = float(obstacle_size + side_margin)
        self.visibility_margin = float(visibility_margin)
        # (n_envs,) side per env: +1 right, -1 left, 0 = draw at the next action.
        self._sides: np.ndarray | None = None

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the side of the envs where ``env_mask`` (``(n_envs,)`` bool) is True (all if None)."""
        if env_mask is None:
            self._sides = None
            return
        if self._sides is None:  # no episode has started yet: sides are drawn on first use
            return
        env_mask = np.asarray(env_mask)
        if env_mask.shape != self._sides.shape or env_mask.dtype != np.bool_:
            raise ValueError(
                f"env_mask: expected a bool array of shape {self._sides.shape}, "
                f"got {env_mask.dtype} {env_mask.shape}"
            )
        self._sides[env_mask] = 0

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Map ``obs["state"]`` ``(n_envs, 2)`` to actions ``(n_envs, 2)`` in ``[-1, 1]``."""
        state = np.asarray(obs["state"], dtype=np.float64)
        if state.ndim != 2 or state.shape[1] != 2:
            raise ValueError(f"obs['state']: expected shape (n_envs, 2), got {state.shape}")
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
            elif self.mode == "nearest":
                sides = np.sign(state[new, 0]).astype(np.int64)
                ties = sides == 0
                sides[ties] = self.rng.choice(np.array([-1, 1]), size=int(ties.sum()))
                self._sides[new] = sides
            else:
                self._sides[new] = 1 if self.mode == "right" else -1
        return self.actions(state, self._sides)

    def actions(self, position: np.ndarray, sides: np.ndarray) -> np.ndarray:
        """Actions ``(n, 2)`` for positions ``(n, 2)`` and sides ``(n,)`` in {-1, +1}."""
        goal = np.broadcast_to(GOAL, position.shape)
        visible = (
            min_l1_norm_on_segment(position, goal) > self.obstacle_size + self.visibility_margin
        )
        below = position[:, 1] < self.split[1] - 1e-5  # tolerance: observations are float32
        waypoint = np.stack([sides * self.side_x, np.zeros(len(sides))], axis=-1)
        target = np.where(below[:, None], self.split, waypoint)
        target = np.where(visible[:, None], goal, target)
        delta = target - position
        dist = np.linalg.norm(delta, axis=-1, keepdims=True)
        land = (below & ~visible)[:, None]  # land exactly on W1
        speed = np.where(land, np.minimum(1.0, dist / self.max_speed), 1.0)
        return (delta / np.maximum(dist, 1e-12) * speed).astype(np.float32)
