"""The demonstrations a run trains on: :class:`TrainingData`, from the Trainer's ``demos`` argument.

Where demonstrations come from (the built-in expert, zarr, npz, LeRobot, PushT) is
:func:`rlox_dp.demo_sources.load_demonstrations_for`; this module loads them on first use, checks
them against the env's spaces (:func:`rlox_dp.demo_sources.check_demonstrations`) and cuts them
into the :class:`DemonstrationBuffer` of the policy's window.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import gymnasium as gym
import torch

from rlox_dp.buffers import DemonstrationBuffer, Demonstrations, Normalizer
from rlox_dp.demo_sources import check_demonstrations, load_demonstrations_for
from rlox_dp.window import Window

if TYPE_CHECKING:
    from rlox_dp.algorithms import PolicyConfig

__all__ = ["TrainingData", "check_buffer_window", "training_buffer"]


def check_buffer_window(buffer: DemonstrationBuffer, window: Window) -> DemonstrationBuffer:
    """``buffer`` when its window is the policy config's ``window``, else a ValueError."""
    if buffer.window_spec != window:
        raise ValueError(f"demos buffer window {buffer.window_spec} differs from the policy "
                         f"config's {window}")
    return buffer


def training_buffer(demos: Demonstrations, config: PolicyConfig, observation_space: gym.spaces.Dict, *,
                    normalizer: Normalizer | None, device: str | torch.device) -> DemonstrationBuffer:
    """The training windows of ``demos`` in ``config``'s window.

    ``normalizer``: an existing policy's statistics (kept as they are); ``None``: fitted to
    ``demos``, with ``config.obs_normalization`` for 1-D observation keys and
    ``config.action_normalization`` for the actions (images always use ``"image"``).
    """
    normalization = {k: config.obs_normalization for k in observation_space.spaces
                     if len(observation_space[k].shape) == 1}
    normalization["action"] = config.action_normalization
    return DemonstrationBuffer(
        demos, config.window,
        normalization=None if normalizer is not None else normalization,
        normalizer=normalizer,
        device=device,
    )


class TrainingData:
    """A run's demonstrations: loaded (or collected by the env's built-in expert, cached) on first
    use, checked against the env's spaces, windowed into a :class:`DemonstrationBuffer`.

    Args:
        demos: the Trainer's ``demos``: a path, :class:`Demonstrations`, a
            :class:`DemonstrationBuffer` (used as it is) or ``None`` (the built-in expert).
        env_id, observation_space, action_space: the env the demonstrations must fit.
        obs_mode: the env's observation mode (PushT's ``"image"`` ...; ``None``: its default).
        n_demos, cache_dir, progress: for a built-in expert (episodes, cache, progress bars).

    Attributes:
        source: the path the demonstrations came from (recorded in checkpoints), else ``None``.
        info: the built-in SB3 expert's ``expert_*`` numbers once it supplied them (else empty).
    """

    def __init__(self, demos: str | os.PathLike | Demonstrations | DemonstrationBuffer | None, env_id: str,
                 observation_space: gym.spaces.Dict, action_space: gym.spaces.Box, obs_mode: str | None,
                 n_demos: int, cache_dir: str | os.PathLike | None, progress: bool) -> None:
        self.source = demos if isinstance(demos, (str, os.PathLike)) else None
        self.info: dict[str, float] = {}
        self.env_id, self.observation_space, self.action_space = env_id, observation_space, action_space
        self.obs_mode, self.n_demos, self.cache_dir, self.progress = obs_mode, n_demos, cache_dir, progress
        self._demos = demos
        self._buffer: DemonstrationBuffer | None = None

    def load(self) -> Demonstrations:
        """The demonstrations (loaded, or the built-in expert's, cached), unchecked.

        Raises:
            TypeError: the run was given a :class:`DemonstrationBuffer`, not demonstrations.
        """
        if isinstance(self._demos, DemonstrationBuffer):
            raise TypeError("this trainer was given a DemonstrationBuffer, not demonstrations")
        demos, info = load_demonstrations_for(
            self.env_id, self._demos, list(self.observation_space.spaces), self.obs_mode,
            self.n_demos, self.cache_dir, self.progress,
        )
        if info:  # the built-in expert's numbers, reported in the metrics
            self.info = info
        return demos

    def check(self, demos: Demonstrations) -> None:
        """:func:`~rlox_dp.demo_sources.check_demonstrations` against the env's spaces."""
        check_demonstrations(demos, self.observation_space, self.action_space, self.env_id)

    def replace(self, demos: Demonstrations) -> None:
        """Use ``demos`` (checked) from now on; the buffer is rebuilt and no path is recorded."""
        self.check(demos)
        self._demos, self.source, self._buffer = demos, None, None

    def buffer(self, config: PolicyConfig, *, normalizer: Normalizer | None,
               device: str | torch.device) -> DemonstrationBuffer:
        """The training windows (built on the first call: see :func:`training_buffer`); a given
        buffer must have ``config``'s window."""
        if self._buffer is None:
            if isinstance(self._demos, DemonstrationBuffer):
                self._buffer = check_buffer_window(self._demos, config.window)
            else:
                demos = self.load()
                self.check(demos)
                self._buffer = training_buffer(demos, config, self.observation_space, normalizer=normalizer,
                                               device=device)
        return self._buffer
