"""The PushT MPC expert's model: copies of the env's own physics.

The model is gym-pusht's own physics: ``n_samples`` copies of the env's pymunk bodies and shapes
(masses, centre of gravity, walls, damping), each in a fresh ``pymunk.Space``, the agent driven
by ``PushTEnv.step``'s PD law (``k_p``, ``k_v``, ``dt``, substeps). The kinematic agent's path
does not depend on contacts, so it is integrated in numpy for all copies at once with the same
float operations; from the same state a copy reproduces the env bit for bit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pymunk

__all__ = ["PushTModel", "sim_state"]


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


class PushTModel:
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
        """Simulate each of ``targets`` ``(N, H, 2)`` from ``state`` (:func:`sim_state`).

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


def sim_state(core: Any) -> dict[str, np.ndarray]:
    """Physical state of a ``PushTEnv``: positions, velocities, block angle and angular velocity."""
    return {
        "agent_pos": np.array(core.agent.position),
        "agent_vel": np.array(core.agent.velocity),
        "block_pos": np.array(core.block.position),
        "block_vel": np.array(core.block.velocity),
        "block_angle": np.array(core.block.angle),
        "block_angvel": np.array(core.block.angular_velocity),
    }
