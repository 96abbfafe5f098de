"""Scripted PushT expert: sampling-based model-predictive control on copies of the simulator.

Every step the planner samples ``n_samples`` sequences of ``horizon`` agent targets around the
previous plan shifted by one step (cross-entropy method, ``n_iterations`` rounds), simulates
them all from the current state and sends the first target of the cheapest one. A sequence is
``n_knots`` waypoints interpolated linearly from the previous target, every per-step change of
target limited to ``max_step`` px (human demonstrations change it by about 10 px per step).

The model is gym-pusht's own physics: ``n_samples`` copies of the env's pymunk bodies and shapes
(masses, centre of gravity, walls, damping), each in a fresh ``pymunk.Space``, the agent driven
by ``PushTEnv.step``'s PD law (``k_p``, ``k_v``, ``dt``, substeps). The kinematic agent's path
does not depend on contacts, so it is integrated in numpy for all copies at once with the same
float operations; from the same state a copy reproduces the env bit for bit.

Cost of a sequence, in px: the block pose error ``|cog - cog_goal| + angle_weight * |angle
error|`` averaged over the horizon plus its final value; the agent's distance to the best
pushing spots (``contact_weight``, scaled down once the pose error is below ``contact_scale``);
``smooth_weight`` times the squared change of the per-step target move. Pushing spots are points
around the T where the agent touches it; a spot's score is the cosine between the twist
(force, torque / gyration radius) a push there gives and the twist the block needs. Spots within
``spot_margin`` of the best score are goals; the distance to them is measured around the outline
and only along straight lines that do not cross the block, so the agent walks around the T.

Reproducibility: the planner's samples come from a seeded ``np.random.Generator`` and its
arithmetic gives the same bits in every run, but pymunk itself is not always bitwise
reproducible between processes: with identical inputs, which of the T's two polygons touches
the agent near their joint can depend on memory layout. Episodes are therefore identical
between runs until such a contact, after which they may differ (the benchmark seeds mostly
agree; seed 10001 took 67 or 89 steps in different processes). Recorded episodes replayed
exactly in every check we ran, in the same and in fresh processes.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pymunk

from rlox_dp.buffers.demonstrations import Demonstrations
from rlox_dp.envs.pusht import (
    BLOCK_KEYPOINTS_LOCAL,
    PUSHT_ENV_ID,
    _core_state,
    _pusht_core,
    block_keypoints,
    load_pusht_demonstrations,
    make_pusht_env,
)

__all__ = [
    "PushTMPCConfig",
    "PushTMPCExpert",
    "default_pusht_demonstrations",
    "generate_pusht_dataset",
    "solve_episode",
]


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


def _rotate(vec: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate ``(..., 2)`` vectors by angles broadcasting against ``(...)`` (radians)."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack(
        [cos * vec[..., 0] - sin * vec[..., 1], sin * vec[..., 0] + cos * vec[..., 1]], -1
    )


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis, with broadcasting, summed in index order.

    Unlike ``@`` (BLAS) or ``einsum``, whose summation order may depend on memory alignment,
    this gives the same bits in every run: the planner's choices then replay exactly.
    """
    out = a[..., 0] * b[..., 0]
    for i in range(1, a.shape[-1]):
        out = out + a[..., i] * b[..., i]
    return out


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles to ``[-pi, pi)``."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _copy_shape(shape: pymunk.Shape, body: pymunk.Body) -> pymunk.Shape:
    """Copy a Poly, Circle or Segment of a PushT space onto ``body``."""
    if isinstance(shape, pymunk.Poly):
        new: pymunk.Shape = pymunk.Poly(body, shape.get_vertices(), radius=shape.radius)
    elif isinstance(shape, pymunk.Circle):
        new = pymunk.Circle(body, shape.radius, shape.offset)
    elif isinstance(shape, pymunk.Segment):
        new = pymunk.Segment(body, shape.a, shape.b, shape.radius)
    else:
        raise TypeError(
            f"shape: unsupported pymunk shape {type(shape).__name__} in the PushT space"
        )
    new.friction, new.elasticity, new.filter = shape.friction, shape.elasticity, shape.filter
    return new


class _PushTModel:
    """Copies of a PushT env's physics: each simulated sequence runs in a fresh pymunk space.

    A fresh space per sequence makes a simulation a function of its inputs: contact caches left
    by an earlier simulation, or by another copy sharing the space, would change the result
    (and copies placed far apart in one space would lose float precision). From the same state
    a copy reproduces ``PushTEnv.step`` bit for bit (unless the env holds contact caches from
    its previous step, which a state does not carry).
    """

    def __init__(self, core: Any) -> None:
        self.k_p, self.k_v, self.dt = float(core.k_p), float(core.k_v), float(core.dt)
        self.n_substeps = int(1 / (core.dt * core.control_hz))  # as PushTEnv.step
        self.gravity, self.damping = core.space.gravity, core.space.damping
        self.statics = [s for s in core.space.shapes if s.body.body_type == pymunk.Body.STATIC]
        self.agent_shapes, self.block_shapes = list(core.agent.shapes), list(core.block.shapes)
        self.block_mass, self.block_moment = core.block.mass, core.block.moment
        self.block_cog = core.block.center_of_gravity

    def _build(self) -> tuple[pymunk.Space, pymunk.Body, pymunk.Body]:
        """A new space with a copy of the arena; returns it, the agent and the block."""
        space = pymunk.Space()
        space.gravity, space.damping = self.gravity, self.damping
        space.add(*[_copy_shape(s, space.static_body) for s in self.statics])
        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        block = pymunk.Body(self.block_mass, self.block_moment)
        block.center_of_gravity = self.block_cog
        shapes = [_copy_shape(s, agent) for s in self.agent_shapes]
        shapes += [_copy_shape(s, block) for s in self.block_shapes]
        space.add(agent, block, *shapes)
        return space, agent, block

    def agent_paths(
        self, pos: np.ndarray, vel: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """PD-driven agent from ``pos``, ``vel`` ``(2,)`` towards ``targets`` ``(N, H, 2)``.

        Returns velocities and positions after every substep, ``(H * substeps, N, 2)`` each,
        with the float operations of ``PushTEnv.step`` and pymunk.
        """
        n, horizon, _ = targets.shape
        p, v = np.broadcast_to(pos, (n, 2)).copy(), np.broadcast_to(vel, (n, 2)).copy()
        vels, positions = np.empty((2, horizon * self.n_substeps, n, 2))
        for t in range(horizon):
            for k in range(t * self.n_substeps, (t + 1) * self.n_substeps):
                v = v + (self.k_p * (targets[:, t] - p) + self.k_v * (0.0 - v)) * self.dt
                p = p + v * self.dt
                vels[k], positions[k] = v, p
        return vels, positions

    def simulate(self, state: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
        """Simulate each of ``targets`` ``(N, H, 2)`` from ``state`` (:func:`_sim_state`).

        Returns ``agent_pos`` ``(N, H, 2)``, ``block_pos`` ``(N, H, 2)`` and ``block_angle``
        ``(N, H)`` after each env step.
        """
        n, horizon, _ = targets.shape
        vels, agent_path = self.agent_paths(state["agent_pos"], state["agent_vel"], targets)
        agent_pos = np.moveaxis(agent_path[self.n_substeps - 1 :: self.n_substeps], 0, 1)
        block_pos, block_angle = np.empty((n, horizon, 2)), np.empty((n, horizon))
        for i in range(n):
            space, agent, block = self._build()
            agent.position = tuple(state["agent_pos"].tolist())
            agent.velocity = tuple(state["agent_vel"].tolist())
            block.angle = float(state["block_angle"])  # first: pymunk turns about the cog
            block.position = tuple(state["block_pos"].tolist())
            block.velocity = tuple(state["block_vel"].tolist())
            block.angular_velocity = float(state["block_angvel"])
            agent_vels = vels[:, i].tolist()
            for t in range(horizon):
                for k in range(t * self.n_substeps, (t + 1) * self.n_substeps):
                    agent.velocity = agent_vels[k]
                    space.step(self.dt)
                block_pos[i, t], block_angle[i, t] = tuple(block.position), block.angle
        return {"agent_pos": agent_pos, "block_pos": block_pos, "block_angle": block_angle}


def _sim_state(core: Any) -> dict[str, np.ndarray]:
    """Physical state of a ``PushTEnv``: positions, velocities, block angle and angular velocity."""
    return {
        "agent_pos": np.array(core.agent.position),
        "agent_vel": np.array(core.agent.velocity),
        "block_pos": np.array(core.block.position),
        "block_vel": np.array(core.block.velocity),
        "block_angle": np.array(core.block.angle),
        "block_angvel": np.array(core.block.angular_velocity),
    }


@dataclass(frozen=True)
class _Geometry:
    """Block geometry in the block frame, and the goal (see :func:`_geometry`)."""

    polygons: list[tuple[np.ndarray, np.ndarray]]  # per convex part: (E, 2) normals, (E,) offsets
    spots: np.ndarray  # (J, 2) agent centres touching the block, in order around the outline
    normals: np.ndarray  # (J, 2) outward normals at the spots
    arc: np.ndarray  # (J, J) distance between spots along the outline, the shorter way
    cog: np.ndarray  # (2,) centre of gravity
    gyration: float  # radius of gyration (px)
    goal_cog: np.ndarray  # (2,) world
    goal_angle: float


def _geometry(core: Any, spacing: float = 10.0) -> _Geometry:
    """Polygons (inside: ``normals @ x <= offsets``) and pushing spots of a ``PushTEnv``'s block.

    Spots lie every ``spacing`` px along the polygon edges, ``agent radius + 1`` px out along the
    edge normal, kept where the agent overlaps no polygon and ordered by angle about the centre
    of gravity (the T's offset outline is star-shaped about it).
    """
    radius = max(s.radius for s in core.agent.shapes) + 1.0
    polygons, spots, normals = [], [], []
    for shape in core.block.shapes:
        verts = np.array(shape.get_vertices())
        edges = np.roll(verts, -1, axis=0) - verts
        lengths = np.linalg.norm(edges, axis=1)
        edge_normals = np.stack([edges[:, 1], -edges[:, 0]], -1) / lengths[:, None]
        polygons.append((edge_normals, (edge_normals * verts).sum(-1)))
        for a, edge, length, normal in zip(verts, edges, lengths, edge_normals, strict=True):
            count = max(1, int(length // spacing))
            for frac in (np.arange(count) + 0.5) / count:
                spots.append(a + frac * edge + radius * normal)
                normals.append(normal)
    spots, normals = np.array(spots), np.array(normals)
    keep = np.all([(_dot(spots[:, None], n) - c).max(1) >= radius - 1e-6 for n, c in polygons], 0)
    cog = np.array(core.block.center_of_gravity)
    order = np.argsort(np.arctan2(*(spots[keep] - cog).T[::-1]))
    spots, normals = spots[keep][order], normals[keep][order]
    gaps = np.linalg.norm(spots - np.roll(spots, 1, axis=0), axis=1)
    along = np.abs(np.subtract.outer(np.cumsum(gaps), np.cumsum(gaps)))
    goal = np.asarray(core.goal_pose, dtype=np.float64)
    return _Geometry(
        polygons,
        spots,
        normals,
        np.minimum(along, gaps.sum() - along),
        cog,
        float(np.sqrt(core.block.moment / core.block.mass)),
        goal[:2] + _rotate(cog, goal[2]),
        float(goal[2]),
    )


class _EpisodePlanner:
    """Cross-entropy MPC for one episode; holds the warm start and the previous target."""

    def __init__(
        self,
        model: _PushTModel,
        geo: _Geometry,
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
        cog = block_pos + _rotate(self.geo.cog, angle)
        return np.linalg.norm(cog - self.geo.goal_cog, axis=-1) + self.config.angle_weight * np.abs(
            _wrap(angle - self.geo.goal_angle)
        )

    def _spot_costs(self, state: dict[str, np.ndarray]) -> np.ndarray:
        """``(J,)`` cost-to-go of each spot: walk along the outline to a goal spot, + its penalty."""
        geo, angle = self.geo, state["block_angle"]
        cog = state["block_pos"] + _rotate(geo.cog, angle)
        need = np.append(geo.goal_cog - cog, geo.gyration * _wrap(geo.goal_angle - angle))
        push = -_rotate(geo.normals, angle)  # (J, 2) force directions
        lever = _rotate(geo.spots - geo.cog, angle)
        torque = lever[:, 0] * push[:, 1] - lever[:, 1] * push[:, 0]
        twist = np.concatenate([push, (torque / geo.gyration)[:, None]], 1)
        score = _dot(twist, need) / np.linalg.norm(twist, axis=1) / max(np.linalg.norm(need), 1e-9)
        penalty = self.config.push_spot_penalty * (score.max() - score)
        penalty[score < score.max() - self.config.spot_margin] = np.inf
        return (geo.arc + penalty[None]).min(1)

    def _blocked(self, start: np.ndarray, ray: np.ndarray) -> np.ndarray:
        """Whether segments ``start`` ``(..., 2)`` + [0, 1] * ``ray`` ``(..., J, 2)`` cross the block."""
        blocked = np.zeros(ray.shape[:-1], dtype=bool)
        for normals, offsets in self.geo.polygons:  # clip against each convex part's half-planes
            room = (offsets - _dot(start[..., None, :], normals))[..., None, :]  # (..., 1, E)
            rate = _dot(ray[..., None, :], normals)  # (..., J, E); room >= 0: inside
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
        agent = _rotate(out["agent_pos"] - out["block_pos"], -angle)  # (N, H, 2) block frame
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
        spot = state["block_pos"] + _rotate(geo.spots[best], state["block_angle"])
        runs = spot - np.array([0.0, 2.0, 5.0, 10.0])[:, None] * _rotate(
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


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def solve_episode(
    seed: int,
    *,
    max_steps: int = 300,
    rng_seed: int | None = None,
    config: PushTMPCConfig | None = None,
    with_images: bool = False,
) -> dict[str, Any]:
    """Solve the PushT episode reset with ``seed`` by MPC on copies of its simulator.

    The planner reads the env's exact physical state every step. Actions are float32, so the
    stored actions replay the episode from ``env.reset(seed=seed)`` (bit for bit in our checks;
    see the module docstring on pymunk's reproducibility). Stops at success (coverage > 0.95)
    or after ``max_steps`` steps. About 70 ms of one CPU core per step with the defaults.

    Args:
        seed: the env's reset seed.
        max_steps: step budget.
        rng_seed: seed of the planner's ``np.random.Generator`` (default: ``seed``).
        config: planner settings (default :class:`PushTMPCConfig`).
        with_images: also return the image observation before each action.

    Returns:
        ``states`` ``(L, 5)`` float64 (agent x, y, block x, y, angle in [0, 2 pi), before each
        action), ``actions`` ``(L, 2)`` float32, ``coverage`` ``(L,)`` after each action,
        ``success`` bool, ``wall_time_s`` float and, with images, ``images`` ``(L, 96, 96, 3)``
        uint8 (the adapter's ``"image"`` observation, channels last).
    """
    seed, max_steps = _check_int("seed", seed, 0), _check_int("max_steps", max_steps, 1)
    config = PushTMPCConfig() if config is None else config
    start = time.perf_counter()
    env = make_pusht_env("image" if with_images else "state", max_episode_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    core = _pusht_core(env)
    rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
    planner = _EpisodePlanner(
        _PushTModel(core),
        _geometry(core),
        config,
        rng,
        np.array(core.agent.position),
    )
    states, actions, coverage, images, success = [], [], [], [], False
    while len(actions) < max_steps and not success:
        states.append(_core_state(core))
        if with_images:
            images.append(np.moveaxis(obs["image"], 0, -1))
        actions.append(planner.act(_sim_state(core)))
        obs, _, _, _, info = env.step(actions[-1])
        coverage.append(float(info["coverage"]))
        success = bool(info["is_success"])
    env.close()
    out = {
        "states": np.array(states),
        "actions": np.array(actions),
        "coverage": np.array(coverage),
        "success": success,
        "wall_time_s": time.perf_counter() - start,
    }
    if with_images:
        out["images"] = np.array(images)
    return out


def _block_pose_from_keypoints(kps: np.ndarray) -> np.ndarray:
    """``(n, 9, 2)`` keypoints -> ``(n, 3)`` block x, y, angle (least-squares rigid fit)."""
    local = BLOCK_KEYPOINTS_LOCAL - BLOCK_KEYPOINTS_LOCAL.mean(0)
    world = kps - kps.mean(1, keepdims=True)
    cross = (local[:, 0] * world[..., 1] - local[:, 1] * world[..., 0]).sum(-1)
    dot = (local * world).sum((-1, -2))
    angle = np.arctan2(cross, dot)
    pos = kps.mean(1) - _rotate(BLOCK_KEYPOINTS_LOCAL.mean(0), angle)
    return np.concatenate([pos, angle[:, None]], 1)


class PushTMPCExpert:
    """The MPC planner as an :class:`~rlox_dp.evaluation.EvalPolicy` for PushT env batches.

    The envs must come from :func:`~rlox_dp.envs.pusht.make_pusht_env` (``gym_pusht/PushT-v0``
    with gym-pusht's default physics and ``obs_mode`` ``"state"`` or ``"keypoints"``, e.g.
    ``rollout(expert, PUSHT_ENV_ID, seeds, env_kwargs={"obs_mode": "keypoints"})``): the block
    pose is read from the observation (float32, so plans differ slightly from
    :func:`solve_episode`'s), the agent's velocity is integrated from its own targets (zero
    after a reset). Each env's planner is created at its first action after :meth:`reset`;
    random numbers are drawn from ``rng`` in env order, so actions depend on ``n_envs`` as well
    as the seeds.

    Args:
        obs_mode: ``"state"`` or ``"keypoints"`` (images do not give the block pose).
        config: planner settings.
        rng: generator (or seed) of the planners' samples.
    """

    def __init__(
        self,
        obs_mode: str = "keypoints",
        config: PushTMPCConfig | None = None,
        rng: np.random.Generator | int = 0,
    ) -> None:
        if obs_mode not in ("state", "keypoints"):
            raise ValueError(f"obs_mode: expected 'state' or 'keypoints', got {obs_mode!r}")
        self.obs_mode, self.config = obs_mode, PushTMPCConfig() if config is None else config
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        env = make_pusht_env("state")
        env.reset(seed=0)
        core = _pusht_core(env)
        self.model, self.geometry = _PushTModel(core), _geometry(core)
        env.close()
        self._planners: list[_EpisodePlanner | None] = []
        self._velocities = np.zeros((0, 2))

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the plans of the envs where ``env_mask`` ``(n_envs,)`` is True (all if None)."""
        if env_mask is None:
            self._planners = []
            return
        mask = np.asarray(env_mask)
        if self._planners and (mask.dtype != np.bool_ or mask.shape != (len(self._planners),)):
            raise ValueError(
                f"env_mask: expected a bool array of shape ({len(self._planners)},), "
                f"got {mask.dtype} {mask.shape}"
            )
        for i in np.flatnonzero(mask) if self._planners else ():
            self._planners[i] = None

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Targets ``(n_envs, 2)`` float32 for ``obs["state"]`` ``(n_envs, 6 or 20)``."""
        dim = {"state": 6, "keypoints": 20}[self.obs_mode]
        if "state" not in obs:
            raise KeyError(f"obs: expected key 'state', got keys {sorted(obs)}")
        vec = np.asarray(obs["state"], dtype=np.float64)
        if vec.ndim != 2 or vec.shape[1] != dim:
            raise ValueError(
                f"obs['state']: expected shape (n_envs, {dim}) for obs_mode "
                f"{self.obs_mode!r}, got {vec.shape}"
            )
        if self.obs_mode == "state":
            agent, pose = (
                vec[:, 0:2],
                np.concatenate([vec[:, 2:4], np.arctan2(vec[:, 4:5], vec[:, 5:6])], 1),
            )
        else:
            agent, pose = vec[:, 18:20], _block_pose_from_keypoints(vec[:, :18].reshape(-1, 9, 2))
        if len(self._planners) != len(vec):
            self._planners, self._velocities = [None] * len(vec), np.zeros((len(vec), 2))
        actions = np.empty((len(vec), 2), dtype=np.float32)
        for i, planner in enumerate(self._planners):
            if planner is None:
                planner = self._planners[i] = _EpisodePlanner(
                    self.model, self.geometry, self.config, self.rng, agent[i]
                )
                self._velocities[i] = 0.0
            state = {
                "agent_pos": agent[i],
                "agent_vel": self._velocities[i].copy(),
                "block_pos": pose[i, :2],
                "block_vel": np.zeros(2),
                "block_angle": np.array(pose[i, 2]),
                "block_angvel": np.array(0.0),
            }
            actions[i] = planner.act(state)
            vels, _ = self.model.agent_paths(
                agent[i], state["agent_vel"], actions[i].astype(np.float64)[None, None]
            )
            self._velocities[i] = vels[-1, 0]
        return actions


def generate_pusht_dataset(
    path: str | os.PathLike,
    *,
    n_episodes: int,
    seed: int = 10_000,
    only_successful: bool = True,
    n_workers: int = 1,
    progress: bool = True,
    max_steps: int = 300,
    with_images: bool = False,
    config: PushTMPCConfig | None = None,
) -> Path:
    """Write expert episodes (seeds ``seed .. seed + n_episodes - 1``) as a PushT replay zarr.

    The layout is the human dataset's (``pusht_cchi_v7_replay.zarr``), so
    :func:`~rlox_dp.envs.pusht.load_pusht_demonstrations` reads it alike: float32
    ``data/state`` ``(N, 5)``, ``data/keypoint`` ``(N, 9, 2)`` (:func:`block_keypoints` of the
    state), ``data/action`` ``(N, 2)``, with images ``data/img`` ``(N, 96, 96, 3)`` float32 in
    0..255, and int64 ``meta/episode_ends`` ``(E,)``; plus ``meta/episode_seeds`` ``(E,)`` and
    root attribute ``"metadata"`` (per-attempt seeds, successes, final coverage, lengths and
    times; success rate; planner config). Written atomically (temporary directory + rename).

    Args:
        path: target ``.zarr`` directory (replaced if it exists).
        n_episodes: episodes attempted.
        seed: first reset seed.
        only_successful: drop episodes that did not reach coverage > 0.95 (RuntimeError if none did).
        n_workers: processes (spawn), one episode per task; 1 runs in this process.
        progress: tqdm bar over episodes.
        max_steps, with_images, config: see :func:`solve_episode`.
    """
    from rlox_dp.buffers.loaders import save_demonstrations

    n_episodes, seed = _check_int("n_episodes", n_episodes, 1), _check_int("seed", seed, 0)
    n_workers = _check_int("n_workers", n_workers, 1)
    if Path(path).suffix != ".zarr":
        raise ValueError(f"path: expected a directory name ending in .zarr, got {str(path)!r}")
    config = PushTMPCConfig() if config is None else config
    seeds = list(range(seed, seed + n_episodes))
    solve = partial(solve_episode, max_steps=max_steps, config=config, with_images=with_images)
    pool = (
        ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
        if n_workers > 1
        else None
    )
    try:
        results = pool.map(solve, seeds) if pool is not None else map(solve, seeds)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=n_episodes, desc="PushT MPC expert", unit="episode")
        episodes = list(results)
    finally:
        if pool is not None:
            pool.shutdown()
    success = [bool(e["success"]) for e in episodes]
    keep = [i for i, ok in enumerate(success) if ok or not only_successful]
    if not keep:
        raise RuntimeError(
            f"only_successful: none of the {n_episodes} episodes (seeds "
            f"{seeds[0]}..{seeds[-1]}) reached coverage > 0.95 in {max_steps} steps"
        )
    kept = [episodes[i] for i in keep]
    states = np.concatenate([e["states"] for e in kept]).astype(np.float32)
    obs = {
        "state": states,
        "keypoint": block_keypoints(states[:, 2:5].astype(np.float64)).astype(np.float32),
    }
    if with_images:
        obs["img"] = np.concatenate([e["images"] for e in kept]).astype(np.float32)
    metadata = {
        "source": "pusht_mpc_expert",
        "env_id": PUSHT_ENV_ID,
        "config": dataclasses.asdict(config),
        "max_steps": max_steps,
        "seeds": seeds,
        "success": success,
        "success_rate": float(np.mean(success)),
        "final_coverage": [float(e["coverage"][-1]) for e in episodes],
        "max_coverage": [float(e["coverage"].max()) for e in episodes],
        "lengths": [len(e["actions"]) for e in episodes],
        "wall_time_s": [float(e["wall_time_s"]) for e in episodes],
        "n_attempted": n_episodes,
        "dropped_seeds": [seeds[i] for i in range(n_episodes) if i not in keep],
    }
    demos = Demonstrations(
        observations=obs,
        actions=np.concatenate([e["actions"] for e in kept]),
        episode_ends=np.cumsum([len(e["actions"]) for e in kept]).astype(np.int64),
        episode_seeds=np.array([seeds[i] for i in keep], dtype=np.int64),
        metadata=metadata,
    )
    return save_demonstrations(demos, path, overwrite=True, channels_last_keys=["img"])


def default_pusht_demonstrations(
    obs_mode: str = "keypoints",
    *,
    n_episodes: int = 100,
    seed: int = 10_000,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Demonstrations:
    """MPC-expert PushT demonstrations, generated on first use and cached.

    The store is ``<cache_dir>/demos/pusht-mpc-<n_episodes>-<seed>.zarr`` (successful episodes
    only, see :func:`generate_pusht_dataset`); ``obs_mode="image"`` regenerates it with images
    when the cached store has none. Loaded with
    :func:`~rlox_dp.envs.pusht.load_pusht_demonstrations` (``cache_dir`` defaults to
    :func:`~rlox_dp.experts.cache.default_cache_dir`).
    """
    import zarr

    from rlox_dp.experts.cache import default_cache_dir

    if obs_mode not in ("state", "keypoints", "image"):
        raise ValueError(f"obs_mode: expected 'state', 'keypoints' or 'image', got {obs_mode!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "demos" / f"pusht-mpc-{int(n_episodes)}-{int(seed)}.zarr"
    images = obs_mode == "image"
    if not path.exists() or (images and "img" not in zarr.open_group(str(path), mode="r")["data"]):
        generate_pusht_dataset(
            path, n_episodes=n_episodes, seed=seed, progress=progress, with_images=images
        )
    return load_pusht_demonstrations(path, obs_mode)
