"""Training a policy: the run's config (:class:`TrainingConfig`) and the training loop's parts.

``setup``: the run's configs, seed, device and threads from the Trainer's arguments, and the env's
spaces; ``data``: :class:`~rlox_dp.training.data.TrainingData`, the demonstrations loaded, checked
and windowed; ``train_step``: :class:`TrainStep` (optimizer, LR schedule, mixed precision,
clipping, EMA, the data-parallel slice) and :func:`sample_batch`; ``callbacks``: :class:`Callback`
and the built-in logging, checkpoint and evaluation callbacks; ``evaluation``: the run's policy
evaluated under its protocol; ``run_checkpoint``: a run saved to and rebuilt from one checkpoint
file (``Trainer.save`` / ``Trainer.load``).
"""

from rlox_dp.training.callbacks import (
    Callback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    LoggingCallback,
)
from rlox_dp.training.config import TrainingConfig
from rlox_dp.training.train_step import StepResult, TrainStep, sample_batch

__all__ = ["Callback", "CallbackList", "CheckpointCallback", "EvalCallback", "LoggingCallback", "StepResult",
           "TrainStep", "TrainingConfig", "sample_batch"]
