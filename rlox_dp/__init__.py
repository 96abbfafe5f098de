"""rlox_dp: Diffusion Policy (Chi et al., RSS 2023) and its baselines, trained from demonstrations.

    from rlox_dp import Trainer
    metrics = Trainer("diffusion", env="Pendulum-v1", seed=42).train()
"""

from rlox_dp.algorithms import (
    Algorithm,
    BCChunkConfig,
    BCConfig,
    DiffusionConfig,
    PolicyConfig,
    available_algorithms,
    get_algorithm_class,
    register_algorithm,
)
from rlox_dp.buffers import Batch, DemonstrationBuffer, Demonstrations, Normalizer
from rlox_dp.checkpoint import CheckpointError
from rlox_dp.config import ConfigError
from rlox_dp.policy_io import load_policy
from rlox_dp.runtime import NonFiniteLossError
from rlox_dp.trainer import Trainer
from rlox_dp.training import TrainingConfig
from rlox_dp.window import Window

__version__ = "0.1.0"

__all__ = [
    "Algorithm",
    "BCChunkConfig",
    "BCConfig",
    "Batch",
    "CheckpointError",
    "ConfigError",
    "DemonstrationBuffer",
    "Demonstrations",
    "DiffusionConfig",
    "NonFiniteLossError",
    "Normalizer",
    "PolicyConfig",
    "Trainer",
    "TrainingConfig",
    "Window",
    "available_algorithms",
    "get_algorithm_class",
    "load_policy",
    "register_algorithm",
]
