"""Algorithms trained from demonstrations; importing this package registers them."""

from rlox_dp.algorithms.base import (
    Algorithm,
    PolicyConfig,
    available_algorithms,
    get_algorithm_class,
    register_algorithm,
)
from rlox_dp.algorithms.bc import BCChunkConfig, BCChunkPolicy, BCConfig, BCPolicy
from rlox_dp.algorithms.consistency import ConsistencyConfig, ConsistencyPolicy
from rlox_dp.algorithms.diffusion import DiffusionConfig, DiffusionPolicy
from rlox_dp.algorithms.flow import FlowConfig, FlowPolicy

__all__ = [
    "Algorithm",
    "BCChunkConfig",
    "BCChunkPolicy",
    "BCConfig",
    "BCPolicy",
    "ConsistencyConfig",
    "ConsistencyPolicy",
    "DiffusionConfig",
    "DiffusionPolicy",
    "FlowConfig",
    "FlowPolicy",
    "PolicyConfig",
    "available_algorithms",
    "get_algorithm_class",
    "register_algorithm",
]
