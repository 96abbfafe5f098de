"""Scripted PushT expert: sampling-based model-predictive control with the simulator as model.

At every step the planner samples ``n_samples`` sequences of ``horizon`` agent targets around a
warm-started plan (cross-entropy method, ``n_iterations`` rounds), simulates them all from the
current state and sends the first target of the cheapest sequence. A sequence is ``n_knots``
waypoints interpolated linearly from the previous target, with every per-step change of target
limited to ``max_step`` pixels (human demonstrations change it by about 10 px per step).

The model is gym-pusht's own physics: ``n_samples`` copies of the env's pymunk bodies and shapes
(same masses, centre of gravity, walls, damping) placed far apart in one ``pymunk.Space``, with
the agent driven by gym-pusht's PD law (``k_p``, ``k_v``, ``dt``, substeps per step); the kinematic
agent's path does not depend on contacts, so it is integrated for all samples at once in numpy
with the same arithmetic. Restoring a state sets positions, angles and velocities.

Cost of a sequence (pixels): block pose error ``|cog - cog_goal| + angle_weight * |angle error|``
averaged over the horizon plus its final value; ``contact_weight`` times the agent's distance to
the nearest good pushing spot (spots around the T whose inward normal agrees with the motion the
block still has to make, the others penalized by ``push_spot_penalty``); ``smooth_weight`` times the
squared change of the target step (the previous executed step included).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pymunk

__all__ = ["PushTMPCConfig", "PushTMPCExpert", "solve_episode"]

_WORLD_SPACING = 2048.0  # px between the copies of the 512 x 512 arena in the model's space


@dataclass(frozen=True)
class PushTMPCConfig:
    """Planner settings (pixels, radians, env steps).

    Attributes:
        horizon: env steps simulated per candidate sequence.
        n_knots: waypoints per sequence (>= 1), at evenly spaced steps up to the horizon.
        n_samples: candidate sequences per iteration (the model holds as many arena copies).
        n_iterations: cross-entropy iterations per env step.
        n_elites: best candidates refitting the sampling distribution.
        noise_std: std of the waypoint perturbations of the first iteration (px).
        max_step: largest change of target between consecutive steps (px).
        angle_weight: px of cost per radian of block angle error.
        contact_weight: weight of the agent's distance to the nearest good pushing spot.
        push_spot_penalty: extra distance (px) charged for a spot that pushes the wrong way.
        smooth_weight: weight of the squared change of target step (1 / px).
    """

    horizon: int = 12
    n_knots: int = 3
    n_samples: int = 32
    n_iterations: int = 3
    n_elites: int = 6
    noise_std: float = 30.0
    max_step: float = 20.0
    angle_weight: float = 60.0
    contact_weight: float = 0.5
    push_spot_penalty: float = 100.0
    smooth_weight: float = 0.02

    def __post_init__(self) -> None:
        ints = {"horizon": 1, "n_knots": 1, "n_samples": 3, "n_iterations": 1, "n_elites": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        if self.n_knots > self.horizon or self.n_elites > self.n_samples:
            raise ValueError(
                f"n_knots <= horizon and n_elites <= n_samples are required, got n_knots="
                f"{self.n_knots}, horizon={self.horizon}, n_elites={self.n_elites}, "
                f"n_samples={self.n_samples}"
            )
        for name in ("noise_std", "max_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive number, got {getattr(self, name)!r}")
        for name in ("angle_weight", "contact_weight", "push_spot_penalty", "smooth_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)!r}")


def _rotate(vec: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate ``(..., 2)`` vectors by ``(...)`` angles (radians)."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack([cos * vec[..., 0] - sin * vec[..., 1], sin * vec[..., 0] + cos * vec[..., 1]], -1)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles to ``[-pi, pi)``."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _copy_shape(shape: pymunk.Shape, body: pymunk.Body, offset: tuple[float, float]) -> pymunk.Shape:
    """Copy a Poly/Circle/Segment of a PushT space onto ``body`` (static shapes shifted)."""
    ox, oy = offset
    if isinstance(shape, pymunk.Poly):
        new: pymunk.Shape = pymunk.Poly(body, shape.get_vertices(), radius=shape.radius)
    elif isinstance(shape, pymunk.Circle):
        new = pymunk.Circle(body, shape.radius, shape.offset)
    elif isinstance(shape, pymunk.Segment):
        (ax, ay), (bx, by) = shape.a, shape.b
        new = pymunk.Segment(body, (ax + ox, ay + oy), (bx + ox, by + oy), shape.radius)
    else:
        raise TypeError(f"shape: unsupported pymunk shape {type(shape).__name__} in the PushT space")
    new.friction, new.elasticity, new.filter = shape.friction, shape.elasticity, shape.filter
    return new


class _BatchedPushTModel:
    """``n_worlds`` copies of a PushT env's physics, simulated together in one pymunk space."""

    def __init__(self, core: Any, n_worlds: int) -> None:
        self.k_p, self.k_v, self.dt = float(core.k_p), float(core.k_v), float(core.dt)
        self.n_substeps = int(1 / (core.dt * core.control_hz))  # as PushTEnv.step
        self.space = pymunk.Space()
        self.space.gravity, self.space.damping = core.space.gravity, core.space.damping
        cols = int(np.ceil(np.sqrt(n_worlds)))
        self.offsets = np.array(
            [[(i % cols) * _WORLD_SPACING, (i // cols) * _WORLD_SPACING] for i in range(n_worlds)]
        )
        statics = [s for s in core.space.shapes if s.body.body_type == pymunk.Body.STATIC]
        self.agents, self.blocks = [], []
        for offset in self.offsets.tolist():
            agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
            block = pymunk.Body(core.block.mass, core.block.moment)
            block.center_of_gravity = core.block.center_of_gravity
            shapes = [_copy_shape(s, self.space.static_body, offset) for s in statics]
            shapes += [_copy_shape(s, agent, offset) for s in core.agent.shapes]
            shapes += [_copy_shape(s, block, offset) for s in core.block.shapes]
            self.space.add(agent, block, *shapes)
            self.agents.append(agent)
            self.blocks.append(block)

    def agent_paths(
        self, pos: np.ndarray, vel: np.ndarray, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """PD-driven agent from ``pos``, ``vel`` ``(2,)`` towards ``targets`` ``(N, H, 2)``.

        Returns velocities ``(H * substeps, N, 2)`` for each substep and positions ``(N, H, 2)``
        after each env step, with the float operations of ``PushTEnv.step``.
        """
        n, horizon, _ = targets.shape
        p, v = np.broadcast_to(pos, (n, 2)).copy(), np.broadcast_to(vel, (n, 2)).copy()
        vels = np.empty((horizon * self.n_substeps, n, 2))
        positions = np.empty((n, horizon, 2))
        for t in range(horizon):
            for k in range(self.n_substeps):
                v = v + (self.k_p * (targets[:, t] - p) + self.k_v * (0.0 - v)) * self.dt
                p = p + v * self.dt
                vels[t * self.n_substeps + k] = v
            positions[:, t] = p
        return vels, positions

    def simulate(self, state: dict[str, np.ndarray], targets: np.ndarray) -> dict[str, np.ndarray]:
        """Simulate ``targets`` ``(N, H, 2)`` (N = n_worlds) from ``state``.

        ``state``: ``agent_pos``, ``agent_vel``, ``block_pos``, ``block_vel`` ``(2,)``,
        ``block_angle``, ``block_angvel`` ``()``. Returns ``agent_pos`` ``(N, H, 2)``,
        ``block_pos`` ``(N, H, 2)`` and ``block_angle`` ``(N, H)`` after each env step.
        """
        n, horizon, _ = targets.shape
        if n != len(self.agents):
            raise ValueError(f"targets: expected {len(self.agents)} sequences, got {n}")
        vels, agent_pos = self.agent_paths(state["agent_pos"], state["agent_vel"], targets)
        angle = float(state["block_angle"])
        for agent, block, offset in zip(self.agents, self.blocks, self.offsets.tolist()):
            agent.position = (state["agent_pos"][0] + offset[0], state["agent_pos"][1] + offset[1])
            block.angle = angle  # angle first: pymunk rotates about the centre of gravity
            block.position = (state["block_pos"][0] + offset[0], state["block_pos"][1] + offset[1])
            block.velocity = tuple(state["block_vel"])
            block.angular_velocity = float(state["block_angvel"])
            self.space.reindex_shapes_for_body(agent)
            self.space.reindex_shapes_for_body(block)
        block_pos, block_angle = np.empty((n, horizon, 2)), np.empty((n, horizon))
        for t in range(horizon):
            for k in range(self.n_substeps):
                for agent, v in zip(self.agents, vels[t * self.n_substeps + k].tolist()):
                    agent.velocity = v
                self.space.step(self.dt)
            block_pos[:, t] = [tuple(b.position) for b in self.blocks]
            block_angle[:, t] = [b.angle for b in self.blocks]
        return {"agent_pos": agent_pos, "block_pos": block_pos - self.offsets[:, None], "block_angle": block_angle}
