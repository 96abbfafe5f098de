"""Plain containers for demonstration data: whole episodes in, training windows out.

``Demonstrations`` is the in-memory form every loader returns and every collector produces:
the concatenation of all episodes (the original Diffusion Policy replay-buffer layout), with
``episode_ends`` marking where each episode stops. ``Batch`` is what a
:class:`~rlox_dp.buffers.DemonstrationBuffer` hands to an algorithm.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["Batch", "Demonstrations"]


class Batch(NamedTuple):
    """A batch of training windows, already normalized.

    Attributes:
        obs: observation key -> tensor of shape ``(B, T_obs, *obs_shape)``; low-dimensional keys
            are float32 ``(B, T_obs, D)``, image keys are float32 ``(B, T_obs, C, H, W)`` in [0, 1].
        action: ``(B, H, D_act)`` float32 normalized actions; ``action[:, 0]`` is the action
            taken at the first observation step of the window.
        action_is_pad: ``(B, H)`` bool, True where the action was replicated from an episode
            edge (not real data); losses mask these entries.
    """

    obs: dict[str, torch.Tensor]
    action: torch.Tensor
    action_is_pad: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """Return the same batch with every tensor moved to ``device``."""
        return Batch(
            obs={k: v.to(device, non_blocking=non_blocking) for k, v in self.obs.items()},
            action=self.action.to(device, non_blocking=non_blocking),
            action_is_pad=self.action_is_pad.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        """Return the same batch in page-locked host memory (for non-blocking copies to a GPU)."""
        return Batch(
            obs={k: v.pin_memory() for k, v in self.obs.items()},
            action=self.action.pin_memory(),
            action_is_pad=self.action_is_pad.pin_memory(),
        )


@dataclass
class Demonstrations:
    """Episodes of observations and actions, concatenated along time.

    Attributes:
        observations: key -> array of shape ``(N, *obs_shape)``, N = total number of steps.
            Array-observation envs use the single key ``"state"``.
        actions: ``(N, D_act)`` float array; ``actions[i]`` was taken after ``observations[i]``.
        episode_ends: ``(E,)`` int64, strictly increasing, ``episode_ends[-1] == N``; episode
            ``e`` covers steps ``[episode_ends[e-1], episode_ends[e])`` (the zarr layout).
        rewards: optional ``(N,)`` float array.
        episode_seeds: optional ``(E,)`` int64 reset seeds, when the episodes came from an env.
        metadata: free-form JSON-serializable information (source, env id, expert return ...).
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    episode_ends: np.ndarray
    rewards: np.ndarray | None = None
    episode_seeds: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def n_steps(self) -> int:
        """Total number of steps N over all episodes."""
        return int(self.actions.shape[0])

    @property
    def n_episodes(self) -> int:
        """Number of episodes E."""
        return int(self.episode_ends.shape[0])

    @property
    def episode_lengths(self) -> np.ndarray:
        """``(E,)`` int64 length of each episode."""
        return np.diff(np.concatenate([[0], self.episode_ends])).astype(np.int64)
