"""Demonstration data: containers, loaders, normalization and training windows."""

from __future__ import annotations

from rlox_dp.buffers.demonstration_buffer import DemonstrationBuffer, validate_demonstrations
from rlox_dp.buffers.demonstrations import Batch, Demonstrations
from rlox_dp.buffers.episodes import demonstrations_from_episodes
from rlox_dp.buffers.loaders import load_demonstrations, save_demonstrations
from rlox_dp.buffers.normalizer import NORM_MODES, Normalizer, NormMode

__all__ = [
    "NORM_MODES",
    "Batch",
    "DemonstrationBuffer",
    "Demonstrations",
    "NormMode",
    "Normalizer",
    "demonstrations_from_episodes",
    "load_demonstrations",
    "save_demonstrations",
    "validate_demonstrations",
]
