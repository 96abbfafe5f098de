"""Training a policy: the run's config (:class:`TrainingConfig`) and the training loop's parts."""

from rlox_dp.training.config import TrainingConfig

__all__ = ["TrainingConfig"]
