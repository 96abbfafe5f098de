"""Callbacks of the training loop, as in Stable-Baselines3: what happens around each step.

:meth:`rlox_dp.Trainer.train` runs ``sample -> TrainStep -> callbacks`` and builds its own
callbacks from the config: :class:`LoggingCallback` (TensorBoard, progress bar, the automatic
thread re-check), :class:`CheckpointCallback` (every ``checkpoint_every`` steps, at the end and on
Ctrl-C) and :class:`EvalCallback` (every ``eval_every`` steps). Yours run after them:

    class StopAtLoss(Callback):
        def on_step(self, trainer, result):
            return result.step < 100 or result.loss.item() > 0.05  # False stops training

    trainer.train(1000, callbacks=[StopAtLoss()])

Hooks run on every rank under ``torchrun`` (write files on ``trainer.dist.is_main`` only, and
stop on all ranks alike). Reading ``result.loss`` waits for the device; the built-in callbacks
read losses only every ``log_every`` steps, after :meth:`TrainStep.check_finite`, which a
callback should also call before it uses the weights (saves, evaluates).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from rlox_dp import threads as threads_module
from rlox_dp.training.train_step import StepResult

if TYPE_CHECKING:
    from rlox_dp.trainer import Trainer
    from rlox_dp.training.config import TrainingConfig

__all__ = [
    "Callback",
    "CallbackList",
    "CheckpointCallback",
    "EvalCallback",
    "LoggingCallback",
    "NullWriter",
    "builtin_callbacks",
    "tensorboard_writer",
]

logger = logging.getLogger("rlox_dp")


class Callback:
    """Base class: override the hooks you need (each defaults to doing nothing).

    Attributes:
        excluded_time_s: seconds this callback spent on work that is not training (evaluation);
            subtracted from the run's ``train_time_s``.
    """

    excluded_time_s: float = 0.0

    def on_train_start(self, trainer: Trainer, total_steps: int) -> None:
        """Before the first step of :meth:`Trainer.train` (``trainer.state.step`` steps are done)."""

    def on_step(self, trainer: Trainer, result: StepResult) -> bool | None:
        """After every gradient step (``trainer.state.step`` counts it); ``False`` stops training."""
        return None

    def on_evaluation(self, trainer: Trainer, summary: dict[str, float]) -> None:
        """After an evaluation was logged (in the loop, and the final one): ``eval/...`` numbers."""

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After the last step or Ctrl-C (``metrics["interrupted"]``); may add to ``metrics`` (the
        built-in callbacks add the loss, the last checkpoint and the final evaluation's summary).
        Not called when training stops with an error."""

    def close(self) -> None:
        """Release what the callback holds (a progress bar); called however training ends."""


class CallbackList(Callback):
    """Runs ``callbacks`` in order; training stops when one ``on_step`` returns ``False``."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        bad = [c for c in callbacks if not isinstance(c, Callback)]
        if bad:
            raise TypeError(f"callbacks must be rlox_dp.training.Callback instances, got {bad!r:.200}")
        self.callbacks = list(callbacks)

    @property
    def excluded_time_s(self) -> float:  # type: ignore[override]
        """The callbacks' excluded times, summed."""
        return sum(c.excluded_time_s for c in self.callbacks)

    def on_train_start(self, trainer: Trainer, total_steps: int) -> None:
        """Every callback's :meth:`Callback.on_train_start`."""
        for c in self.callbacks:
            c.on_train_start(trainer, total_steps)

    def on_step(self, trainer: Trainer, result: StepResult) -> bool:
        """Every callback's :meth:`Callback.on_step`; ``False`` if any returned ``False``."""
        go_on = True
        for c in self.callbacks:
            go_on = c.on_step(trainer, result) is not False and go_on
        return go_on

    def on_evaluation(self, trainer: Trainer, summary: dict[str, float]) -> None:
        """Every callback's :meth:`Callback.on_evaluation`."""
        for c in self.callbacks:
            c.on_evaluation(trainer, summary)

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Every callback's :meth:`Callback.on_train_end`."""
        for c in self.callbacks:
            c.on_train_end(trainer, metrics)

    def close(self) -> None:
        """Every callback's :meth:`Callback.close`."""
        for c in self.callbacks:
            c.close()


class NullWriter:
    """Stands in for the TensorBoard writer on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        """Nothing."""

    def flush(self) -> None:
        """Nothing."""


def tensorboard_writer(log_dir: Path, description: dict[str, Any]) -> Any:
    """A TensorBoard ``SummaryWriter`` in ``log_dir`` (created), with the run's ``description``
    (algorithm, env, config ...) as its ``config`` text."""
    from torch.utils.tensorboard import SummaryWriter

    log_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(log_dir))
    writer.add_text("config", "```\n" + json.dumps(description, indent=2, default=str) + "\n```")
    return writer


class LoggingCallback(Callback):
    """Every ``log_every`` steps (and at the last): the mean loss over those steps and ranks,
    the learning rate, the algorithm's diagnostics, the gradient norm and EMA decay to
    TensorBoard (``train/...``), the progress bar's postfix, and (automatic thread mode) a new
    choice of torch threads every ``threads.RECHECK_S`` seconds.

    Args:
        log_every: steps between logs.
        writer: a TensorBoard ``SummaryWriter`` (anything with ``add_scalar``).
        progress: show a progress bar (rank 0 only).
        description: the bar's label.
        recheck_threads: re-choose the torch threads (``None``: explicit thread counts, never
            re-chosen).

    Attributes:
        loss: the last logged mean loss (``None`` before the first log).
    """

    def __init__(self, *, log_every: int, writer: Any, progress: bool, description: str,
                 recheck_threads: Callable[[], None] | None = None) -> None:
        self.log_every, self.writer, self.progress = log_every, writer, progress
        self.description, self.recheck_threads = description, recheck_threads
        self.loss: float | None = None
        self._recent: list[torch.Tensor] = []
        self._bar: Any = None

    def on_train_start(self, trainer: Trainer, total_steps: int) -> None:
        """Open the progress bar at the run's current step."""
        self.total_steps, self._recent, self._threads_checked = total_steps, [], time.perf_counter()
        self._bar = tqdm(total=total_steps, initial=trainer.state.step, desc=self.description,
                         disable=not (self.progress and trainer.dist.is_main), dynamic_ncols=True, leave=False)

    def on_step(self, trainer: Trainer, result: StepResult) -> bool:
        """Collect the loss; log every ``log_every`` steps (after the finiteness check)."""
        self._recent.append(result.loss)
        step = trainer.state.step
        if step % self.log_every == 0 or step == self.total_steps:
            trainer.train_step.check_finite()
            self.loss = self._mean(trainer)
            add = self.writer.add_scalar
            add("train/loss", self.loss, step)
            add("train/lr", result.lr, step)
            for k, v in result.info.items():
                add(f"train/{k}", float(v), step)
            if result.grad_norm is not None:
                add("train/grad_norm", float(result.grad_norm), step)
            if result.ema_decay is not None:
                add("train/ema_decay", result.ema_decay, step)
            self._bar.set_postfix(loss=f"{self.loss:.4f}", lr=f"{result.lr:.2e}")
            if (self.recheck_threads is not None
                    and time.perf_counter() - self._threads_checked > threads_module.RECHECK_S):
                self.recheck_threads()  # the load may have changed since the last choice
                self._threads_checked = time.perf_counter()
        self._bar.update(1)
        return True

    def _mean(self, trainer: Trainer) -> float:
        """Mean of the collected losses over steps and ranks (the global batch's loss)."""
        dist = trainer.dist
        mean = dist.all_reduce_sum(torch.stack(self._recent).mean()).item() / dist.world_size
        self._recent.clear()
        return mean

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """``metrics["loss"]``: the last logged mean, or the mean since (after Ctrl-C)."""
        self.close()
        if self._recent:
            self.loss = self._mean(trainer)
        if self.loss is not None:
            metrics["loss"] = self.loss

    def close(self) -> None:
        """Close the progress bar."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class CheckpointCallback(Callback):
    """A run checkpoint every ``every`` steps (not at the last: :meth:`on_train_end` writes
    that one), at the end and after Ctrl-C; rank 0 writes.

    Args:
        every: steps between checkpoints.
        save: writes the checkpoint and returns its path (``Trainer``'s step checkpoint).
    """

    def __init__(self, *, every: int, save: Callable[[], Path]) -> None:
        self.every, self.save = every, save

    def on_train_start(self, trainer: Trainer, total_steps: int) -> None:
        """Remember the run's length."""
        self.total_steps = total_steps

    def on_step(self, trainer: Trainer, result: StepResult) -> bool:
        """Save every ``every`` steps (after the finiteness check, on every rank alike)."""
        step = trainer.state.step
        if step % self.every == 0 and step < self.total_steps:
            trainer.train_step.check_finite()
            if trainer.dist.is_main:
                self.save()
        return True

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Save the final (or interrupted) state."""
        if not trainer.dist.is_main:
            return
        path = self.save()
        if metrics.get("interrupted"):
            logger.warning("interrupted at step %d; checkpoint saved to %s", trainer.state.step, path)


class EvalCallback(Callback):
    """Evaluate the (EMA) policy every ``every`` steps but the last and, with ``final``, at the
    end (rank 0); log each summary (``Trainer.log_evaluation``: ``eval_history``, TensorBoard).
    In-loop evaluations are excluded from ``train_time_s``; if one raises, the training state is
    saved first. The final one adds its summary to the run's metrics (Ctrl-C during it: the
    episodes finished before, and ``interrupted``).

    Args:
        every: steps between in-loop evaluations (0: none).
        final: evaluate after the last step too (not after Ctrl-C).
        evaluate: runs an evaluation and returns its ``eval/...`` summary.
        save: writes a run checkpoint (before an in-loop evaluation error propagates).
    """

    def __init__(self, *, every: int, final: bool, evaluate: Callable[[], dict[str, float]],
                 save: Callable[[], Path]) -> None:
        self.every, self.final, self.evaluate, self.save = every, final, evaluate, save

    def on_train_start(self, trainer: Trainer, total_steps: int) -> None:
        """Remember the run's length; reset the excluded time."""
        self.total_steps, self.excluded_time_s = total_steps, 0.0

    def on_step(self, trainer: Trainer, result: StepResult) -> bool:
        """Evaluate every ``every`` steps (the finiteness check runs on every rank alike)."""
        step = trainer.state.step
        if not (self.every and step % self.every == 0 and step < self.total_steps):
            return True
        trainer.train_step.check_finite()
        if trainer.dist.is_main:
            start = time.perf_counter()
            try:
                summary = self.evaluate()
            except Exception:  # Ctrl-C is the loop's business
                path = self.save()
                logger.error("evaluation at step %d failed; the training state was saved to %s first", step, path)
                raise
            trainer.log_evaluation(summary)
            self.excluded_time_s += time.perf_counter() - start
            trainer.policy.train()
        return True

    def on_train_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """The final evaluation, into ``metrics``."""
        if not (self.final and not metrics.get("interrupted") and trainer.dist.is_main):
            return
        from rlox_dp.evaluation import EvaluationInterrupted

        try:
            metrics.update(trainer.log_evaluation(self.evaluate()))
        except EvaluationInterrupted as stop:  # the trained state is saved already
            metrics["interrupted"] = 1.0
            metrics.update(stop.summary())
            logger.warning("final evaluation interrupted after %d of %d episodes",
                           stop.n_finished, stop.n_requested)


def builtin_callbacks(training: TrainingConfig, *, writer: Any, progress: bool, description: str,
                      recheck_threads: Callable[[], None] | None, evaluate: Callable[[], dict[str, float]],
                      final_evaluation: bool, save: Callable[[], Path]) -> list[Callback]:
    """The Trainer's own callbacks, in the order they run, from the training config:
    :class:`LoggingCallback` (``log_every``), :class:`CheckpointCallback` (``checkpoint_every``)
    and :class:`EvalCallback` (``eval_every``; ``final_evaluation``: also after the last step).
    The other arguments are theirs."""
    return [
        LoggingCallback(log_every=training.log_every, writer=writer, progress=progress, description=description,
                        recheck_threads=recheck_threads),
        CheckpointCallback(every=training.checkpoint_every, save=save),
        EvalCallback(every=training.eval_every, final=final_evaluation, evaluate=evaluate, save=save),
    ]
