"""The scripted PushT expert: MPC on copies of the simulator, its policy adapter and datasets.

Modules: :mod:`~rlox_dp.experts.pusht.planner` (the planner and its settings),
:mod:`~rlox_dp.experts.pusht.model` (simulator copies), :mod:`~rlox_dp.experts.pusht.geometry`
(block geometry, pushing spots), :mod:`~rlox_dp.experts.pusht.policy` (the planner as an
evaluation policy), :mod:`~rlox_dp.experts.pusht.dataset` (episodes and cached datasets).
"""

from __future__ import annotations

from rlox_dp.experts.pusht.dataset import (
    default_pusht_demonstrations,
    generate_pusht_dataset,
    solve_episode,
)
from rlox_dp.experts.pusht.planner import PushTMPCConfig
from rlox_dp.experts.pusht.policy import PushTMPCExpert

__all__ = [
    "PushTMPCConfig",
    "PushTMPCExpert",
    "default_pusht_demonstrations",
    "generate_pusht_dataset",
    "solve_episode",
]
