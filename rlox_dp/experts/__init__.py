"""Experts that demonstrate and label: the registry, SB3 and scripted experts, demonstrations, DAgger labels."""

from __future__ import annotations

from rlox_dp.experts.bimodal import BimodalPointExpert
from rlox_dp.experts.cache import default_cache_dir
from rlox_dp.experts.demonstrations import collect_demonstrations, default_demonstrations
from rlox_dp.experts.labelling import (
    ExpertChunk,
    ExpertLabeller,
    LabellingError,
    StateAccess,
    get_labeller,
    register_state_access,
)
from rlox_dp.experts.registry import ExpertFactory, expert_env_ids, get_expert, register_expert
from rlox_dp.experts.sb3 import SB3Expert, SB3ExpertSpec

__all__ = [
    "BimodalPointExpert",
    "ExpertChunk",
    "ExpertFactory",
    "ExpertLabeller",
    "LabellingError",
    "SB3Expert",
    "SB3ExpertSpec",
    "StateAccess",
    "collect_demonstrations",
    "default_cache_dir",
    "default_demonstrations",
    "expert_env_ids",
    "get_expert",
    "get_labeller",
    "register_expert",
    "register_state_access",
]
