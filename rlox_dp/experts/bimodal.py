"""The scripted two-mode expert of :class:`~rlox_dp.envs.bimodal.BimodalPointEnv`.

It drives straight to the split point W1 below the obstacle, then, with a side drawn per
episode, to the left or right waypoint W2 and from there to the goal (geometry in
:mod:`rlox_dp.envs.bimodal`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from rlox_dp.envs.bimodal import GOAL, min_l1_norm_on_segment

__all__ = ["BimodalPointExpert"]


class BimodalPointExpert:
    """Scripted expert for :class:`~rlox_dp.envs.bimodal.BimodalPointEnv`, one side per episode.

    Implements :class:`rlox_dp.evaluation.EvalPolicy`. Each env's side (left or right) is drawn
    with probability 1/2 from ``rng`` when its episode starts (after :meth:`reset` for that env),
    unless ``mode`` fixes it or ties it to the start (``"nearest"``: the side of the start's x, as
    DAgger's labels from a visited state use, :mod:`rlox_dp.experts.labelling`). Below the split
    point W1 the expert heads for W1 (slowing down on the last step to land on it exactly); above
    it, for its side's waypoint W2; once the straight segment to the goal clears the obstacle by
    ``visibility_margin`` (in L1 distance), for the goal.

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
