"""Scripted PushT expert: sampling-based model-predictive control on copies of the simulator.

Every step the planner samples ``n_samples`` sequences of ``horizon`` agent targets around the
previous plan shifted by one step (cross-entropy method, ``n_iterations`` rounds), simulates
them all from the current state (:class:`~rlox_dp.experts.pusht.model.PushTModel`) and sends
the first target of the cheapest one. A sequence is ``n_knots`` waypoints interpolated linearly
from the previous target, every per-step change of target limited to ``max_step`` px (human
demonstrations change it by about 10 px per step).

Cost of a sequence, in px: the block pose error ``|cog - cog_goal| + angle_weight * |angle
error|`` averaged over the horizon plus its final value; the agent's distance to the best
pushing spots (``contact_weight``, scaled down once the pose error is below ``contact_scale``);
``smooth_weight`` times the squared change of the per-step target move. Pushing spots are points
around the T where the agent touches it; a spot's score is the cosine between the twist
(force, torque / gyration radius) a push there gives and the twist the block needs. Spots within
``spot_margin`` of the best score are goals; the distance to them is measured around the outline
and only along straight lines that do not cross the block, so the agent walks around the T.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from rlox_dp.experts.pusht.geometry import BlockGeometry, dot, rotate, wrap_angle
from rlox_dp.experts.pusht.model import PushTModel

__all__ = ["EpisodePlanner", "PushTMPCConfig"]


@dataclass(frozen=True)
class PushTMPCConfig:
    """Planner settings (pixels, radians, env steps); see the module docstring for the cost.

    Attributes:
        horizon: env steps simulated per candidate sequence.
        n_knots: waypoints per sequence, evenly spaced up to the horizon.
        n_samples: candidate sequences per iteration (the model holds as many arena copies).
        n_iterations: cross-entropy iterations per env step.
        n_elites: best candidates refitting the sampling distribution.
        noise_std: waypoint noise std of the first iteration (px); a third of the samples use
            it, a third a quarter of it, a third a sixteenth.
        max_step: largest change of target between consecutive steps (px).
        angle_weight: px of cost per radian of block angle error.
        contact_weight: weight of the agent's distance to the best pushing spots.
        contact_scale: below this pose error (px) the contact weight shrinks proportionally.
        push_spot_penalty: extra distance (px) per unit of push score below the best.
        spot_margin: spots scoring below the best by more are not goals.
        smooth_weight: weight of the squared change of the per-step target move (1 / px).
    """

    horizon: int = 12
    n_knots: int = 3
    n_samples: int = 32
    n_iterations: int = 3
    n_elites: int = 6
    noise_std: float = 30.0
    max_step: float = 20.0
    angle_weight: float = 60.0
    contact_weight: float = 1.0
    contact_scale: float = 20.0
    push_spot_penalty: float = 200.0
    spot_margin: float = 0.15
    smooth_weight: float = 0.005

    def __post_init__(self) -> None:
        for name, low in {
            "horizon": 1,
            "n_knots": 1,
            "n_samples": 8,
            "n_iterations": 1,
            "n_elites": 1,
        }.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if self.n_knots > self.horizon or self.n_elites > self.n_samples:
            raise ValueError(
                f"expected n_knots <= horizon and n_elites <= n_samples, got "
                f"n_knots={self.n_knots}, horizon={self.horizon}, "
                f"n_elites={self.n_elites}, n_samples={self.n_samples}"
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.type == "float" and not (
                isinstance(value, (int, float, np.number))
                and not isinstance(value, bool)
                and np.isfinite(value)
                and value >= 0
            ):
                raise ValueError(f"{field.name}: expected a finite number >= 0, got {value!r}")
        for name in ("noise_std", "max_step", "contact_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)!r}")


class EpisodePlanner:
    """Cross-entropy MPC for one episode; holds the warm start and the previous target."""

    def __init__(
        self,
        model: PushTModel,
        geo: BlockGeometry,
        config: PushTMPCConfig,
        rng: np.random.Generator,
        agent_pos: np.ndarray,
    ) -> None:
        self.model, self.geo, self.config, self.rng = model, geo, config, rng
        self.prev_target = np.asarray(agent_pos, dtype=np.float64).copy()
        self.prev_step = np.zeros(2)
        self.warm = np.repeat(self.prev_target[None], config.horizon, 0)  # (H, 2) shifted plan
        self.contact_weight = config.contact_weight
        h, k = config.horizon, config.n_knots
        self.knot_times = np.arange(1, k + 1) * h / k - 1.0
        xp = np.concatenate([[-1.0], self.knot_times])  # (H, K + 1) interpolation weights
        self.interp = np.stack([np.interp(np.arange(h), xp, row) for row in np.eye(k + 1)], 1)

    def _paths(self, knots: np.ndarray) -> np.ndarray:
        """Waypoints ``(N, K, 2)`` -> targets ``(N, H, 2)``, steps limited to ``max_step``."""
        anchor = np.broadcast_to(self.prev_target, (len(knots), 1, 2))
        points = np.concatenate([anchor, knots], 1)  # (N, K + 1, 2)
        dense = sum(self.interp[:, j, None] * points[:, None, j] for j in range(points.shape[1]))
        steps = np.diff(np.concatenate([anchor, dense], 1), axis=1)
        norm = np.linalg.norm(steps, axis=-1, keepdims=True)
        steps *= np.minimum(1.0, self.config.max_step / np.maximum(norm, 1e-12))
        return np.clip(self.prev_target + np.cumsum(steps, axis=1), 0.0, 512.0)

    def _pose_error(self, block_pos: np.ndarray, angle: np.ndarray) -> np.ndarray:
        """``(...)`` px: distance of the cog to the goal's + ``angle_weight`` * |angle error|."""
        cog = block_pos + rotate(self.geo.cog, angle)
        return np.linalg.norm(cog - self.geo.goal_cog, axis=-1) + self.config.angle_weight * np.abs(
            wrap_angle(angle - self.geo.goal_angle)
        )

    def _spot_costs(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """``(J,)`` cost-to-go of each spot: walk along the outline to a goal spot, + its penalty."""
        geo, angle = self.geo, state["block_angle"]
        cog = state["block_pos"] + rotate(geo.cog, angle)
        need = np.append(geo.goal_cog - cog, geo.gyration * wrap_angle(geo.goal_angle - angle))
        push = -rotate(geo.normals, angle)  # (J, 2) force directions
        lever = rotate(geo.spots - geo.cog, angle)
        torque = lever[:, 0] * push[:, 1] - lever[:, 1] * push[:, 0]
        twist = np.concatenate([push, (torque / geo.gyration)[:, None]], 1)
        score = dot(twist, need) / np.linalg.norm(twist, axis=1) / max(np.linalg.norm(need), 1e-9)
        penalty = self.config.push_spot_penalty * (score.max() - score)
        penalty[score < score.max() - self.config.spot_margin] = np.inf
        return (geo.arc + penalty[None]).min(1)

    def _blocked(self, start: np.ndarray, ray: np.ndarray) -> np.ndarray:
        """Whether segments ``start`` ``(..., 2)`` + [0, 1] * ``ray`` ``(..., J, 2)`` cross the block."""
        blocked = np.zeros(ray.shape[:-1], dtype=bool)
        for normals, offsets in self.geo.polygons:  # clip against each convex part's half-planes
            room = (offsets - dot(start[..., None, :], normals))[..., None, :]  # (..., 1, E)
            rate = dot(ray[..., None, :], normals)  # (..., J, E); room >= 0: inside
            with np.errstate(divide="ignore", invalid="ignore"):
                t = room / rate
            enter = np.where(rate < 0, t, 0.0).max(-1)
            leave = np.where(rate > 0, t, 1.0).min(-1)
            blocked |= (enter < leave - 1e-3) & ~((rate == 0) & (room < 0)).any(-1)
        return blocked

    def _costs(
        self, state: dict[str, np.ndarray], paths: np.ndarray, spot_costs: np.ndarray
    ) -> np.ndarray:
        """``(N,)`` cost of target sequences ``paths`` ``(N, H, 2)`` simulated from ``state``."""
        out = self.model.simulate(state, paths)
        angle = out["block_angle"]
        pose = self._pose_error(out["block_pos"], angle)  # (N, H)
        agent = rotate(out["agent_pos"] - out["block_pos"], -angle)  # (N, H, 2) block frame
        ray = self.geo.spots - agent[:, :, None]  # (N, H, J, 2) agent -> spot
        dist = np.linalg.norm(ray, axis=-1) + spot_costs
        seen = np.where(self._blocked(agent, ray), np.inf, dist).min(-1)
        reach = np.where(np.isfinite(seen), seen, dist.min(-1))  # agent inside: no spot seen
        anchor = np.broadcast_to(self.prev_target, (len(paths), 1, 2))
        steps = np.diff(np.concatenate([anchor, paths], 1), axis=1)
        prev = np.concatenate(
            [np.broadcast_to(self.prev_step, (len(paths), 1, 2)), steps[:, :-1]], 1
        )
        jerk = ((steps - prev) ** 2).sum((1, 2))
        return (
            pose.mean(1)
            + pose[:, -1]
            + self.contact_weight * reach.mean(1)
            + self.config.smooth_weight * jerk
        )

    def act(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """Plan from the physical ``state``; return the next target ``(2,)`` as float32."""
        cfg, geo = self.config, self.geo
        spot_costs = self._spot_costs(state)
        error = float(self._pose_error(state["block_pos"], state["block_angle"]))
        self.contact_weight = cfg.contact_weight * min(1.0, error / cfg.contact_scale)
        mean = np.stack(
            [np.interp(self.knot_times, np.arange(cfg.horizon), w) for w in self.warm.T], -1
        )
        std = np.full_like(mean, cfg.noise_std)
        scale = (0.25 ** (np.arange(cfg.n_samples) % 3))[:, None, None]
        # extra first candidates: straight runs to the best spot, ending pushed in by 0..10 px
        best = int(np.argmin(spot_costs))
        spot = state["block_pos"] + rotate(geo.spots[best], state["block_angle"])
        runs = spot - np.array([0.0, 2.0, 5.0, 10.0])[:, None] * rotate(
            geo.normals[best], state["block_angle"]
        )
        best_cost, best_path = np.inf, self.warm
        for it in range(cfg.n_iterations):
            knots = mean + std * scale * self.rng.standard_normal((cfg.n_samples, *mean.shape))
            knots[0] = mean
            if it == 0:
                knots[1 : 1 + len(runs)] = runs[:, None]
            paths = self._paths(knots)
            costs = self._costs(state, paths, spot_costs)
            order = np.argsort(costs, kind="stable")
            if costs[order[0]] < best_cost:
                best_cost, best_path = float(costs[order[0]]), paths[order[0]]
            elites = knots[order[: cfg.n_elites]]
            mean, std = elites.mean(0), np.maximum(elites.std(0), 1.0)
        target = best_path[0].astype(np.float32)  # float32 actions replay exactly from a dataset
        self.prev_step = target - self.prev_target
        self.prev_target = target.astype(np.float64)
        self.warm = np.concatenate([best_path[1:], best_path[-1:]], 0)
        return target
