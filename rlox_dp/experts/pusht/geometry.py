"""PushT block geometry for the MPC expert: rotations, the T's convex parts, its pushing spots.

Pushing spots are points around the T where the agent touches it, in order around the outline;
:class:`~rlox_dp.experts.pusht.planner.EpisodePlanner` scores them and measures the agent's way
to them around the block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlox_dp.envs.pusht import BLOCK_KEYPOINTS_LOCAL

__all__ = ["BlockGeometry", "block_geometry", "block_pose_from_keypoints", "dot", "rotate", "wrap_angle"]


def rotate(vec: np.ndarray, angle: np.ndarray | float) -> np.ndarray:
    """Rotate ``(..., 2)`` vectors by angles broadcasting against ``(...)`` (radians)."""
    cos, sin = np.cos(angle), np.sin(angle)
    return np.stack(
        [cos * vec[..., 0] - sin * vec[..., 1], sin * vec[..., 0] + cos * vec[..., 1]], -1
    )


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis, with broadcasting, summed in index order.

    Unlike ``@`` (BLAS) or ``einsum``, whose summation order may depend on memory alignment,
    this gives the same bits in every run: the planner's choices then replay exactly.
    """
    out = a[..., 0] * b[..., 0]
    for i in range(1, a.shape[-1]):
        out = out + a[..., i] * b[..., i]
    return out


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angles to ``[-pi, pi)``."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


@dataclass(frozen=True)
class BlockGeometry:
    """Block geometry in the block frame, and the goal (see :func:`block_geometry`)."""

    polygons: list[tuple[np.ndarray, np.ndarray]]  # per convex part: (E, 2) normals, (E,) offsets
    spots: np.ndarray  # (J, 2) agent centres touching the block, in order around the outline
    normals: np.ndarray  # (J, 2) outward normals at the spots
    arc: np.ndarray  # (J, J) distance between spots along the outline, the shorter way
    cog: np.ndarray  # (2,) centre of gravity
    gyration: float  # radius of gyration (px)
    goal_cog: np.ndarray  # (2,) world
    goal_angle: float


def block_geometry(core: Any, spacing: float = 10.0) -> BlockGeometry:
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
    keep = np.all([(dot(spots[:, None], n) - c).max(1) >= radius - 1e-6 for n, c in polygons], 0)
    cog = np.array(core.block.center_of_gravity)
    order = np.argsort(np.arctan2(*(spots[keep] - cog).T[::-1]))
    spots, normals = spots[keep][order], normals[keep][order]
    gaps = np.linalg.norm(spots - np.roll(spots, 1, axis=0), axis=1)
    along = np.abs(np.subtract.outer(np.cumsum(gaps), np.cumsum(gaps)))
    goal = np.asarray(core.goal_pose, dtype=np.float64)
    return BlockGeometry(
        polygons,
        spots,
        normals,
        np.minimum(along, gaps.sum() - along),
        cog,
        float(np.sqrt(core.block.moment / core.block.mass)),
        goal[:2] + rotate(cog, goal[2]),
        float(goal[2]),
    )


def block_pose_from_keypoints(kps: np.ndarray) -> np.ndarray:
    """``(n, 9, 2)`` keypoints -> ``(n, 3)`` block x, y, angle (least-squares rigid fit)."""
    local = BLOCK_KEYPOINTS_LOCAL - BLOCK_KEYPOINTS_LOCAL.mean(0)
    world = kps - kps.mean(1, keepdims=True)
    cross = (local[:, 0] * world[..., 1] - local[:, 1] * world[..., 0]).sum(-1)
    dot = (local * world).sum((-1, -2))
    angle = np.arctan2(cross, dot)
    pos = kps.mean(1) - rotate(BLOCK_KEYPOINTS_LOCAL.mean(0), angle)
    return np.concatenate([pos, angle[:, None]], 1)
