"""``Trainer``: demonstrations in, a trained and evaluated policy out, in one shared loop.

    Trainer("diffusion", env="Pendulum-v1", seed=42).train()

looks the algorithm up in the registry, validates its config, loads (or collects from the
built-in expert) the demonstrations, builds the :class:`DemonstrationBuffer`, trains with AdamW,
warmup + cosine learning rate, gradient clipping and an EMA of the weights, logs to TensorBoard,
writes atomic checkpoints, and evaluates the EMA policy in vectorized Gymnasium envs. The parts
it composes live in :mod:`rlox_dp.training`.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rlox_dp.acceleration import accelerate
from rlox_dp.algorithms import Algorithm, PolicyConfig, get_algorithm_class
from rlox_dp.buffers import DemonstrationBuffer, Demonstrations, Normalizer
from rlox_dp.distributed import init_distributed
from rlox_dp.ema import EMA
from rlox_dp.envs.spec import env_spec
from rlox_dp.policy_io import save_policy
from rlox_dp.run_directory import (
    RunLock,
    check_run_dir,
    enter_run_dir,
    run_dir_for,
    write_step_checkpoint,
)
from rlox_dp.runtime import NonFiniteLossError, TrainState, seed_everything
from rlox_dp.threads import configure_threads, configure_threads_for_batch, policy_flops_per_sample
from rlox_dp.training.callbacks import (
    Callback,
    CallbackList,
    NullWriter,
    builtin_callbacks,
    tensorboard_writer,
)
from rlox_dp.training.config import TrainingConfig
from rlox_dp.training.data import TrainingData
from rlox_dp.training.evaluation import evaluate_run_policy
from rlox_dp.training.run_checkpoint import load_run, save_run
from rlox_dp.training.setup import (
    check_global_batch,
    checked_env_spaces,
    run_settings,
    total_steps_for,
)
from rlox_dp.training.train_step import TrainStep, sample_batch

__all__ = ["NonFiniteLossError", "Trainer"]

logger = logging.getLogger("rlox_dp")


class Trainer:
    """Train one registered algorithm on demonstrations for one Gymnasium env.

    Args:
        algorithm: registered name (``"diffusion"``, ``"bc"``, ``"bc_chunk"``).
        env: Gymnasium env id with a continuous (Box) action space.
        config: the algorithm's policy config (``DiffusionConfig`` ...), or a flat dict of its
            fields and :class:`~rlox_dp.training.TrainingConfig`'s, split by the dataclass that owns
            each key (documented aliases accepted; ``"seed"``, ``"threads"``, the env option
            ``"obs"`` and DAgger's ``"dagger_<field>"`` settings also allowed).
        training: a :class:`~rlox_dp.training.TrainingConfig` or a dict of its fields (optimizer,
            EMA, budget, logging, evaluation ...); optimizer fields left unset take the policy's
            defaults (``config.training_defaults()``).
        demos: a ``.zarr``/``.npz`` path, a LeRobotDataset v3 folder (PushT: image mode when it
            has video), :class:`Demonstrations`, a :class:`DemonstrationBuffer`, or ``None`` for
            the env's built-in expert (trained once and cached).
        seed: seeds weights, sampling and data order (default 0).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        log_dir: the run directory: TensorBoard logs and ``checkpoints/step_<step>.safetensors``
            (+ ``last.safetensors``); default ``runs/<algorithm>-<env>-<time>``. It must be new or
            empty (or this run's own, when resuming) unless ``overwrite``.
        env_kwargs: passed to the env factory (e.g. ``{"obs_mode": "keypoints"}`` for PushT).
        cache_dir: where experts and collected demos are cached (default ``$RLOX_DP_CACHE`` or
            ``~/.cache/rlox_dp``).
        progress: show progress bars.
        preset: apply the recommended settings of ``rlox_dp.presets`` for this algorithm and env
            under a dict config (your keys win); ignored when ``config`` is a dataclass (and
            its training part when ``training`` is a ``TrainingConfig``).
        threads: torch threads for CPU training and evaluation (also ``config={"threads": N}``);
            None chooses from the free cores and the network size (:mod:`rlox_dp.threads`).
        overwrite: train in ``log_dir`` even if it holds another run, whose checkpoints,
            TensorBoard events and ``run.json`` are then removed at the start of :meth:`train`.
    """

    def __init__(
        self,
        algorithm: str,
        env: str,
        *,
        config: PolicyConfig | Mapping[str, Any] | None = None,
        training: TrainingConfig | Mapping[str, Any] | None = None,
        demos: str | os.PathLike | Demonstrations | DemonstrationBuffer | None = None,
        seed: int | None = None,
        device: str | torch.device = "auto",
        log_dir: str | os.PathLike | None = None,
        env_kwargs: Mapping[str, Any] | None = None,
        cache_dir: str | os.PathLike | None = None,
        progress: bool = True,
        preset: bool = True,
        overwrite: bool = False,
        threads: int | None = None,
        _normalizer: Normalizer | None = None,
        _resume: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(env, str) or not env:
            raise TypeError(f"env must be a Gymnasium env id string such as 'Pendulum-v1', got {env!r}")
        self.algorithm_class = get_algorithm_class(algorithm)
        self.algorithm_name = self.algorithm_class.name  # the registered spelling
        self.use_preset = preset
        self.env_spec = env_spec(env)  # what rlox_dp knows about the env (generic if unregistered)
        self.env_id = self.env_spec.env_id
        settings = run_settings(self.algorithm_class, self.env_spec, config, training, env_kwargs=env_kwargs,
                                seed=seed, device=device, threads=threads, use_preset=preset)
        self.config, self.training, self.env_kwargs = settings.config, settings.training, settings.env_kwargs
        self.seed, self.device, self.threads = settings.seed, settings.device, settings.threads
        self.dagger_config = settings.dagger  #: the config's ``dagger_<field>`` keys (None: no DAgger)
        configure_threads(self.threads, self.device, what="setup")  # expert training, demos
        self.dist = init_distributed(self.device)
        check_global_batch(self.training, self.dist.world_size)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        # A run id is shared by a run and its resumptions: it decides whose directory is whose.
        resume = dict(_resume or {})
        self.run_id: str = resume.get("run_id") or uuid.uuid4().hex
        self.resumed_from: str | None = resume.get("path")
        self.overwrite = bool(overwrite)
        self.log_dir = run_dir_for(log_dir, resume.get("log_dir"), algorithm, env)  # resumed: beside the original
        if self.dist.is_main:  # only rank 0 writes the run directory
            check_run_dir(self.log_dir, self.run_id, int(resume.get("step", 0)), overwrite=self.overwrite,
                          check_writable=log_dir is not None)
        self.env_kwargs = self.env_spec.obs_mode_for_demos(demos, self.env_kwargs)  # video: image mode
        self.observation_space, self.action_space = checked_env_spaces(self.env_id, self.env_kwargs)
        #: the demonstrations: loaded (or collected by the built-in expert) on first use, checked, windowed.
        self.data = TrainingData(demos, self.env_id, self.observation_space, self.action_space,
                                 self.env_spec.obs_mode(self.env_kwargs), self.training.n_demos, self.cache_dir,
                                 self.progress)
        seed_everything(self.seed)
        if _normalizer is None:
            _normalizer = self.buffer.normalizer
        self.policy: Algorithm = self.algorithm_class(
            self.config, self.observation_space, self.action_space, _normalizer
        ).to(self.device)
        accelerate(self.policy)  # inference fast paths (evaluation, the EMA copy): same outputs
        self._flops_per_sample = policy_flops_per_sample(self.policy) if self.device.type == "cpu" else None
        self.state = TrainState(self.seed, self.device)
        #: the gradient step: optimizer, LR schedule, mixed precision, clipping, EMA, DDP wrapper.
        self.train_step = TrainStep(self.policy, self.training, device=self.device, dist=self.dist)
        self._writer = None
        self._callbacks = CallbackList([])  # those of the running train() call
        #: ``{"step": ..., "eval/...": ...}`` for every evaluation logged by :meth:`train`
        #: (every ``eval_every`` steps and at the end), oldest first.
        self.eval_history: list[dict[str, float]] = []

    # -- demonstrations ------------------------------------------------------------------------
    @property
    def demos_source(self) -> str | os.PathLike | None:
        """The path the demonstrations came from (recorded in checkpoints), else ``None``."""
        return self.data.source

    @property
    def demo_info(self) -> dict[str, float]:
        """The built-in expert's ``expert_*`` numbers (its return ...), reported in the metrics."""
        return self.data.info

    @demo_info.setter
    def demo_info(self, info: dict[str, float]) -> None:
        self.data.info = info

    def load_demonstrations(self) -> Demonstrations:
        """The demonstrations given at construction (loaded, or the built-in expert's, cached)."""
        return self.data.load()

    def set_demonstrations(self, demos: Demonstrations) -> None:
        """Train on ``demos`` from the next step on (e.g. DAgger's aggregated data); they are
        normalized with the policy's existing statistics. Checkpoints then record no demos path."""
        self.data.replace(demos)

    @property
    def buffer(self) -> DemonstrationBuffer:
        """The training windows (built on first use; loads or collects demonstrations)."""
        existing = getattr(self, "policy", None)  # none yet while __init__ fits the normalizer
        return self.data.buffer(self.config, normalizer=existing.normalizer if existing is not None else None,
                                device=self.device if self.training.buffer_device == "auto" else "cpu")

    # -- training -------------------------------------------------------------------------------
    @property
    def eval_policy(self) -> Algorithm:
        """The policy evaluated and saved for acting: the EMA weights when EMA is on."""
        return self.ema.model if self.ema is not None else self.policy

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The AdamW optimizer (owned by :attr:`train_step`)."""
        return self.train_step.optimizer

    @property
    def ema(self) -> EMA | None:
        """The EMA of the weights (owned by :attr:`train_step`; ``None`` when off)."""
        return self.train_step.ema

    @property
    def writer(self) -> Any:
        """The run's TensorBoard writer (created on first use; a stand-in on ranks other than 0)."""
        if not self.dist.is_main:
            return NullWriter()
        if self._writer is None:
            self._writer = tensorboard_writer(self.log_dir, self.describe())
        return self._writer

    def describe(self) -> dict[str, Any]:
        """JSON-able summary of the run: algorithm, env, seed, device, policy and training configs."""
        return {"algorithm": self.algorithm_name, "env": self.env_id, "env_kwargs": self.env_kwargs, "seed": self.seed,
                "device": str(self.device), "config": self.config.to_dict(), "training": self.training.to_dict()}

    def train(self, total_steps: int | None = None, *, total_timesteps: int | None = None,
              evaluate: bool = True, callbacks: Sequence[Callback] = (), dagger: bool = True) -> dict[str, float]:
        """Train until ``total_steps`` gradient steps in all (resumed runs continue counting).

        Each step samples a batch of windows, runs :attr:`train_step` on it, then the callbacks:
        logging, checkpoints and in-loop evaluation (:mod:`rlox_dp.training.callbacks`), then yours.

        Args:
            total_steps: gradient steps (default ``training.total_steps``).
            total_timesteps: rlox-compatible alternative: the number of training windows
                (demonstration samples) to draw; gradient steps = ceil(total_timesteps / batch_size).
            evaluate: evaluate the EMA policy at the end (``training.n_eval_episodes`` episodes).
            callbacks: your :class:`~rlox_dp.training.Callback` objects (example in
                :mod:`rlox_dp.training.callbacks`), run after the built-in ones; one whose
                ``on_step`` returns ``False`` stops training (then checkpoint and final evaluation
                as at the end).
            dagger: with ``dagger_<field>`` config keys, run DAgger rounds (round 0: ``total_steps``;
                :func:`rlox_dp.dagger.train_with_dagger`); False: the current demonstrations only.

        Returns:
            metrics: ``loss`` (mean over the last ``log_every`` steps), ``step``, ``train_time_s``
            and ``steps_per_s`` (in-loop evaluations excluded; see :attr:`eval_history`), the
            evaluation summary (``eval/return_mean`` ...), ``expert/...`` when demos came from the
            built-in expert, and ``interrupted`` (1.0 after Ctrl-C, also during the final
            evaluation: then the summary covers the episodes finished before it).

        Checkpoints go to ``<log_dir>/checkpoints/step_<step>.safetensors`` every
        ``checkpoint_every`` steps, at the end, on Ctrl-C and before an in-loop evaluation's error
        propagates; ``last.safetensors`` is the newest. The run directory is locked meanwhile.

        Raises:
            NonFiniteLossError: a step's loss or gradients were not finite (checked every
                ``log_every`` steps, before checkpoints and evaluations, and at the end; the
                error names the first such step, whose update was skipped).
        """
        total = total_steps_for(total_steps, total_timesteps, self.training)
        if dagger and self.dagger_config is not None:  # (rlox_dp.dagger imports this module)
            from rlox_dp.dagger import train_with_dagger
            return train_with_dagger(self, total, evaluate=evaluate, callbacks=callbacks)
        lock = self.claim_log_dir() if self.dist.is_main else None
        try:
            return self._train(total, evaluate, callbacks)
        finally:
            if lock is not None:
                lock.release()

    def claim_log_dir(self) -> RunLock:
        """Lock :attr:`log_dir` and claim it for this run (:mod:`rlox_dp.run_directory`); release the lock."""
        lock = enter_run_dir(self.log_dir, self.run_id, self.state.step, overwrite=self.overwrite,
                             info={"algorithm": self.algorithm_name, "env": self.env_id,
                                   "resumed_from": self.resumed_from})
        self.overwrite = False  # from now on the directory is this run's
        return lock

    def _save_run_checkpoint(self) -> Path:
        """``<log_dir>/checkpoints/step_<step>.safetensors``, ``last`` pointed at it, old ones pruned."""
        return write_step_checkpoint(self.log_dir, self.state.step, self.save, self.training.keep_last_n)

    def _train(self, total: int, evaluate: bool, callbacks: Sequence[Callback]) -> dict[str, float]:
        buffer, cfg, batch_size = self.buffer, self.training, self.training.batch_size
        self._configure_threads(batch_size // self.dist.world_size, "training")
        recheck = None if self.threads is not None else (
            lambda: self._configure_threads(batch_size // self.dist.world_size, "training"))
        self._callbacks = CallbackList([*builtin_callbacks(
            cfg, writer=self.writer, progress=self.progress, description=f"{self.algorithm_name} {self.env_id}",
            recheck_threads=recheck, evaluate=self.evaluate, final_evaluation=evaluate and cfg.n_eval_episodes > 0,
            save=self._save_run_checkpoint), *callbacks])
        self.policy.train()
        t0, start, interrupted = time.perf_counter(), self.state.step, False
        try:
            self._callbacks.on_train_start(self, total)
            step, snapshot = self.state.step, self.state.snapshot()
            try:
                while self.state.step < total:
                    step, snapshot = self.state.step, self.state.snapshot()  # Ctrl-C mid-step resumes exactly
                    batch, global_batch = sample_batch(buffer, batch_size, self.state.data_generator,
                                                       self.device, self.dist)
                    result = self.train_step(batch, step=step, total_steps=total,
                                             generator=self.state.model_generator, global_batch=global_batch)
                    self.state.step += 1
                    if not self._callbacks.on_step(self, result):
                        break
            except KeyboardInterrupt:
                interrupted = True
                if self.state.step == step:  # the interrupted step never reached the optimizer
                    self.state.restore(snapshot)
            self.train_step.check_finite()
            elapsed = time.perf_counter() - t0 - self._callbacks.excluded_time_s
            metrics = {"step": float(self.state.step), "train_time_s": elapsed,
                       "steps_per_s": (self.state.step - start) / max(elapsed, 1e-9),
                       "interrupted": float(interrupted),
                       **{f"expert/{k[len('expert_'):]}": v for k, v in self.demo_info.items()}}
            self._callbacks.on_train_end(self, metrics)  # loss, last checkpoint, final evaluation
        finally:
            self._callbacks.close()
            self._callbacks = CallbackList([])
        self.writer.flush()
        self.dist.barrier()
        return {"loss": metrics.pop("loss"), **metrics} if "loss" in metrics else metrics

    def log_evaluation(self, summary: dict[str, float]) -> dict[str, float]:
        """Record an evaluation ``summary`` at the current step: :attr:`eval_history`, the log,
        TensorBoard (rank 0) and the running callbacks' ``on_evaluation``; returns it."""
        self.eval_history.append({"step": float(self.state.step), **summary})
        logger.info("step %d: %s", self.state.step,
                    ", ".join(f"{k[5:]} {v:.4g}" for k, v in summary.items() if k.startswith("eval/")))
        for k, v in summary.items():
            self.writer.add_scalar(k, v, self.state.step)
        self._callbacks.on_evaluation(self, summary)
        return summary

    def evaluate(self, n_episodes: int | None = None, n_envs: int | None = None, *,
                 seed: int | None = None, video_dir: str | os.PathLike | None = None,
                 n_videos: int = 0) -> dict[str, float]:
        """Evaluate the (EMA) policy on ``n_episodes`` episodes with seeds ``seed, seed+1, ...``
        (``None``: the training config's ``n_eval_episodes`` / ``n_eval_envs`` / ``eval_seed``).

        Returns:
            ``EvalResult.summary()``: ``eval/return_mean``, ``eval/success_rate`` (when the env
            reports success), ``eval/score_mean`` (PushT coverage score) ...

        Raises:
            ValueError: a count that is not a non-negative int, or an unwritable ``video_dir``.
            rlox_dp.evaluation.EvaluationInterrupted: Ctrl-C; its ``summary()`` covers the
                episodes finished before it.
        """
        self.last_eval = evaluate_run_policy(
            self.eval_policy, self.env_id, self.env_kwargs, self.training, n_episodes=n_episodes, n_envs=n_envs, seed=seed,
            video_dir=video_dir, n_videos=n_videos, progress=self.progress, configure_threads=self._configure_threads)
        return self.last_eval.summary()

    def _configure_threads(self, batch: int, what: str) -> int:
        """Choose the torch threads for ``what`` on ``batch`` samples; returns the count before."""
        return configure_threads_for_batch(self.threads, self.device, self._flops_per_sample, batch, what)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_policy(self, path: str | os.PathLike) -> Path:
        """The policy alone, to act with anywhere: EMA weights (when on), normalizer, policy config,
        spaces, env id and evaluation protocol, without training config, optimizer or RNG states;
        read it with :func:`rlox_dp.load_policy`."""
        return save_policy(self.eval_policy, path, env=self.env_id, env_kwargs=self.env_kwargs,
                           evaluation=self.training.evaluation_protocol())

    def save(self, path: str | os.PathLike) -> Path:
        """Atomically write weights, EMA weights, optimizer, normalizer, RNG states, step, config
        (with integrity digests) to the file ``path``; returns it.

        Raises:
            ValueError: ``path`` is empty or an existing directory.
        """
        return save_run(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, demos: Any = None, device: str | torch.device = "auto",
             log_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
             progress: bool = True, overwrite: bool = False) -> Trainer:
        """Rebuild a trainer from a checkpoint; ``.train(total_steps)`` resumes exactly.

        ``demos`` defaults to the path recorded in the checkpoint (or the built-in expert's cached
        demos); it is only read when training continues. Evaluation needs no demonstrations.

        ``log_dir``: where :meth:`train` writes. Default: a new run directory beside the original
        one (``<its parent>/<algorithm>-<env>-<time>``), so resuming never replaces anything. Name
        the original run directory to continue in place: allowed when it holds no checkpoint of a
        higher step than this one (see :mod:`rlox_dp.run_directory`). ``overwrite``: as in
        :class:`Trainer`, for a ``log_dir`` that holds another run.

        Raises:
            CheckpointError: the file is corrupted (integrity digests), not a trainer checkpoint,
                or does not fit the algorithm/config/env it names.
        """
        return load_run(cls, path, demos=demos, device=device, log_dir=log_dir, cache_dir=cache_dir,
                        progress=progress, overwrite=overwrite)
