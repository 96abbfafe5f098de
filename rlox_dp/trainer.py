"""``Trainer``: demonstrations in, a trained and evaluated policy out, in one shared loop.

    Trainer("diffusion", env="Pendulum-v1", seed=42).train()

looks the algorithm up in the registry, validates its config, loads (or collects from the
built-in expert) the demonstrations, builds the :class:`DemonstrationBuffer`, trains with AdamW,
warmup + cosine learning rate, gradient clipping and an EMA of the weights, logs to TensorBoard,
writes atomic checkpoints, and evaluates the EMA policy in vectorized Gymnasium envs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from tqdm.auto import tqdm

from rlox_dp import threads as threads_module
from rlox_dp.algorithms import Algorithm, AlgorithmConfig, get_algorithm_class
from rlox_dp.buffers import DemonstrationBuffer, Demonstrations, Normalizer
from rlox_dp.checkpoint import (
    CheckpointError,
    load_checkpoint,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_checkpoint,
    space_from_json,
    space_to_json,
    validate_trainer_header,
)
from rlox_dp.config import ConfigError
from rlox_dp.demo_sources import check_demonstrations, load_demonstrations_for
from rlox_dp.distributed import init_distributed
from rlox_dp.ema import EMA
from rlox_dp.policy_io import POLICY_KIND
from rlox_dp.presets import preset_for
from rlox_dp.run_directory import (
    RunLock,
    check_run_dir,
    check_writable_dir,
    claim_run_dir,
    default_run_dir,
    legacy_run_id,
    write_step_checkpoint,
)
from rlox_dp.runtime import NonFiniteLossError, TrainState, lr_at, resolve_device, seed_everything
from rlox_dp.threads import configure_threads, policy_flops_per_sample, restore_threads

__all__ = ["NonFiniteLossError", "Trainer"]

logger = logging.getLogger("rlox_dp")

#: config keys that configure the environment rather than the algorithm.
ENV_CONFIG_KEYS = {"obs": "obs_mode", "obs_mode": "obs_mode"}


def _count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (not a bool, float or string), else a ValueError naming ``name``."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


class _NullWriter:
    """Stands in for the TensorBoard writer on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass


class Trainer:
    """Train one registered algorithm on demonstrations for one Gymnasium env.

    Args:
        algorithm: registered name (``"diffusion"``, ``"bc"``, ``"bc_chunk"``).
        env: Gymnasium env id with a continuous (Box) action space.
        config: the algorithm's config dataclass, or a dict of its fields (documented aliases
            accepted; ``"seed"`` and the env option ``"obs"`` also allowed).
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
            under a dict config (your keys win); ignored when ``config`` is a dataclass.
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
        config: AlgorithmConfig | Mapping[str, Any] | None = None,
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
        self.algorithm_name = algorithm
        self.use_preset = preset
        self.algorithm_class = get_algorithm_class(algorithm)
        self.env_id = env
        self.env_kwargs = dict(env_kwargs or {})
        self.config, config_seed = self._build_config(config)
        if seed is not None and config_seed is not None and seed != config_seed:
            raise ConfigError(f"seed given twice with different values: seed={seed}, config seed={config_seed}")
        self.seed = int(seed if seed is not None else (config_seed if config_seed is not None else 0))
        self.device = resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
        if threads is not None and self._config_threads is not None and threads != self._config_threads:
            raise ConfigError(f"threads given twice with different values: threads={threads}, "
                              f"config threads={self._config_threads}")
        self.threads = threads if threads is not None else self._config_threads
        configure_threads(self.threads, self.device, what="setup")  # expert training, demos
        self.dist = init_distributed(self.device)
        if self.config.batch_size % self.dist.world_size:
            raise ConfigError(
                f"config field 'batch_size' ({self.config.batch_size}) is the global batch and must be "
                f"divisible by the number of processes ({self.dist.world_size})"
            )
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.progress = progress
        # A run id is shared by a run and its resumptions: it decides whose directory is whose.
        resume = dict(_resume or {})
        self.run_id: str = resume.get("run_id") or uuid.uuid4().hex
        self.resumed_from: str | None = resume.get("path")
        self.overwrite = bool(overwrite)
        if log_dir is None:  # a resumed run gets a new directory beside the original one
            self.log_dir = default_run_dir(Path(resume["log_dir"]).parent if resume.get("log_dir") else "runs",
                                           algorithm, env)
        else:
            self.log_dir = Path(log_dir)
        if self.dist.is_main:  # only rank 0 writes the run directory
            check_run_dir(self.log_dir, self.run_id, int(resume.get("step", 0)), overwrite=self.overwrite,
                          check_writable=log_dir is not None)
        if env.startswith("gym_pusht/") and "obs_mode" not in self.env_kwargs:
            from rlox_dp.buffers.lerobot import has_video_features, is_lerobot_dataset

            if is_lerobot_dataset(demos) and has_video_features(demos):
                self.env_kwargs["obs_mode"] = "image"  # LeRobot's PushT: image + agent position
                logger.info("LeRobot dataset with video: PushT in image mode (obs=image)")
        self.observation_space, self.action_space = self._env_spaces()
        self.demos_source = demos if isinstance(demos, (str, os.PathLike)) else None
        self._demos_arg = demos
        self._buffer: DemonstrationBuffer | None = None
        self.demo_info: dict[str, float] = {}
        seed_everything(self.seed)
        if _normalizer is None:
            _normalizer = self.buffer.normalizer
        self.policy: Algorithm = self.algorithm_class(
            self.config, self.observation_space, self.action_space, _normalizer
        ).to(self.device)
        self._flops_per_sample = policy_flops_per_sample(self.policy) if self.device.type == "cpu" else None
        # Fused AdamW: one kernel over all parameters instead of a loop of per-op kernels
        # (about 10x faster on CPU for a 250 M-parameter U-Net; see benchmarks/speed.py).
        self.optimizer = torch.optim.AdamW(
            self.policy.optimizer_param_groups(), lr=self.config.lr, betas=self.config.adam_betas,
            eps=self.config.adam_eps, weight_decay=self.config.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.ema = (
            EMA(self.policy, power=self.config.ema_power, inv_gamma=self.config.ema_inv_gamma,
                min_decay=self.config.ema_min_decay, max_decay=self.config.ema_max_decay)
            if self.config.use_ema else None
        )
        self.state = TrainState(self.seed, self.device)
        self._train_step = self._make_train_step()
        self._ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self._ddp = DistributedDataParallel(
                self.policy, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self._writer = None
        #: ``{"step": ..., "eval/...": ...}`` for every evaluation logged by :meth:`train`
        #: (every ``eval_every`` steps and at the end), oldest first.
        self.eval_history: list[dict[str, float]] = []

    # -- construction helpers -----------------------------------------------------------------------
    def _build_config(self, config: Any) -> tuple[AlgorithmConfig, int | None]:
        cls = self.algorithm_class.config_class
        self._config_threads: int | None = None  # config={"threads": N}: a run setting, not saved
        if config is None:
            config = {}
        if isinstance(config, AlgorithmConfig):
            if not isinstance(config, cls):
                raise ConfigError(
                    f"config is a {type(config).__name__}, but algorithm {self.algorithm_name!r} "
                    f"expects a {cls.__name__} (or a dict)"
                )
            return config, None
        if not isinstance(config, Mapping):
            raise ConfigError(f"config must be a dict or {cls.__name__}, got {type(config).__name__}")
        values = dict(config)
        seed = values.pop("seed", None)
        self._config_threads = values.pop("threads", None)
        for key, env_key in ENV_CONFIG_KEYS.items():
            if key in values:
                if not self.env_id.startswith("gym_pusht/"):
                    raise ConfigError(
                        f"config key {key!r} (observation mode) only applies to PushT envs "
                        f"(gym_pusht/...), not {self.env_id!r}"
                    )
                self.env_kwargs[env_key] = values.pop(key)
        values = cls.resolve_aliases(values)
        if self.use_preset:
            preset = preset_for(self.algorithm_name, self.env_id, self.env_kwargs.get("obs_mode"))
            window = {"horizon", "n_obs_steps", "n_action_steps"}
            if window & set(values):  # the user's window wins as a whole
                preset = {k: v for k, v in preset.items() if k not in window}
            preset = {k: v for k, v in preset.items() if k not in values}
            if preset:
                logger.info("using the %s preset for %s: %s (preset=False turns it off)",
                            self.algorithm_name, self.env_id, preset)
            values = {**preset, **values}
        return cls.from_dict(values), seed

    def _env_spaces(self) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
        from rlox_dp.envs import env_spaces

        try:
            obs_space, action_space = env_spaces(self.env_id, env_kwargs=self.env_kwargs)
        except ImportError as err:  # "module:EnvId" whose module is not installed
            raise ValueError(f"env {self.env_id!r}: cannot import its module: {err}") from None
        nested = [k for k, v in obs_space.spaces.items() if not isinstance(v, gym.spaces.Box)]
        if nested:
            raise ValueError(
                f"env {self.env_id!r}: observation keys {nested} are not Box spaces "
                f"({[type(obs_space[k]).__name__ for k in nested]}); rlox_dp takes a Box or a flat "
                "Dict of Boxes (flatten nested Dicts with a gymnasium ObservationWrapper)"
            )
        return obs_space, action_space

    def _load_demonstrations(self) -> Demonstrations:
        demos, info = load_demonstrations_for(
            self.env_id, self._demos_arg, list(self.observation_space.spaces), self.env_kwargs.get("obs_mode"),
            self.config.n_demos, self.cache_dir, self.progress,
        )
        if info:  # the built-in expert's numbers, reported in the metrics
            self.demo_info = info
        return demos

    def _check_demos(self, demos: Demonstrations) -> None:
        check_demonstrations(demos, self.observation_space, self.action_space, self.env_id)

    def load_demonstrations(self) -> Demonstrations:
        """The demonstrations given at construction (loaded, or the built-in expert's, cached)."""
        if isinstance(self._demos_arg, DemonstrationBuffer):
            raise TypeError("this trainer was given a DemonstrationBuffer, not demonstrations")
        return self._load_demonstrations()

    def set_demonstrations(self, demos: Demonstrations) -> None:
        """Train on ``demos`` from the next step on (e.g. DAgger's aggregated data); they are
        normalized with the policy's existing statistics. Checkpoints then record no demos path."""
        self._check_demos(demos)
        self._demos_arg, self.demos_source, self._buffer = demos, None, None

    @property
    def buffer(self) -> DemonstrationBuffer:
        """The training windows (built on first use; loads or collects demonstrations)."""
        if self._buffer is None:
            if isinstance(self._demos_arg, DemonstrationBuffer):
                buf = self._demos_arg
                if (buf.n_obs_steps, buf.horizon, buf.n_action_steps) != (
                    self.config.n_obs_steps, self.config.horizon, self.config.n_action_steps
                ):
                    raise ValueError(
                        "demos buffer windows (n_obs_steps, horizon, n_action_steps) = "
                        f"{(buf.n_obs_steps, buf.horizon, buf.n_action_steps)} differ from the config's "
                        f"{(self.config.n_obs_steps, self.config.horizon, self.config.n_action_steps)}"
                    )
                self._buffer = buf
            else:
                demos = self._load_demonstrations()
                self._check_demos(demos)
                normalization = {k: self.config.obs_normalization for k in self.observation_space.spaces
                                 if len(self.observation_space[k].shape) == 1}
                normalization["action"] = self.config.action_normalization
                existing = getattr(self, "policy", None)
                self._buffer = DemonstrationBuffer(
                    demos, self.config.n_obs_steps, self.config.horizon, self.config.n_action_steps,
                    drop_n_last_frames=self.config.drop_n_last_frames,
                    normalization=None if existing is not None else normalization,
                    normalizer=existing.normalizer if existing is not None else None,
                    device=self.device if self.config.buffer_device == "auto" else "cpu",
                )
        return self._buffer

    def _make_train_step(self):
        cfg = self.config
        if cfg.compile_model:
            # Networks compiled in place (state-dict keys unchanged); the loss code stays eager.
            self.policy.compile_networks(mode=cfg.compile_mode)
            if self.ema is not None:
                self.ema.model.compile_networks(mode=cfg.compile_mode)
        if cfg.mixed_precision == "fp16" and self.device.type != "cuda":
            raise ValueError(
                f"config field 'mixed_precision': 'fp16' needs a CUDA device, got device {self.device}; "
                "use 'bf16' on CPU"
            )
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
        self._scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None

        def step(batch):
            model = self._ddp if self._ddp is not None else self.policy
            with torch.autocast(self.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss, info = model(batch, self.state.model_generator)
            return loss.float(), info

        return step

    # -- training -------------------------------------------------------------------------------
    @property
    def eval_policy(self) -> Algorithm:
        """The policy evaluated and saved for acting: the EMA weights when EMA is on."""
        return self.ema.model if self.ema is not None else self.policy

    def _writer_or_none(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir))
            self._writer.add_text("config", "```\n" + json.dumps(self.describe(), indent=2, default=str) + "\n```")
        return self._writer

    def describe(self) -> dict[str, Any]:
        """JSON-able summary of the run: algorithm, env, seed, device and full config."""
        return {"algorithm": self.algorithm_name, "env": self.env_id, "env_kwargs": self.env_kwargs,
                "seed": self.seed, "device": str(self.device), "config": self.config.to_dict()}

    def train(self, total_steps: int | None = None, *, total_timesteps: int | None = None,
              evaluate: bool = True) -> dict[str, float]:
        """Train until ``total_steps`` gradient steps in all (resumed runs continue counting).

        Args:
            total_steps: gradient steps (default ``config.total_steps``).
            total_timesteps: rlox-compatible alternative: the number of training windows
                (demonstration samples) to draw; gradient steps = ceil(total_timesteps / batch_size).
            evaluate: evaluate the EMA policy at the end (``config.n_eval_episodes`` episodes).

        Returns:
            metrics: ``loss`` (mean over the last ``log_every`` steps), ``step``, ``train_time_s``
            and ``steps_per_s`` (in-loop evaluations excluded; see :attr:`eval_history`), the
            evaluation summary (``eval/return_mean`` ...), ``expert/...`` when demos came from the
            built-in expert, and ``interrupted`` (1.0 after Ctrl-C, also during the final
            evaluation: then the summary covers the episodes finished before it).

        Checkpoints go to ``<log_dir>/checkpoints/step_<step>.safetensors`` every
        ``checkpoint_every`` steps, at the end, on Ctrl-C and before an in-loop evaluation's error
        propagates; ``last.safetensors`` is the newest. The run directory is locked meanwhile.
        """
        if total_steps is not None and total_timesteps is not None:
            raise ValueError("give total_steps or total_timesteps, not both")
        if total_timesteps is not None:
            total_steps = math.ceil(_count("total_timesteps", total_timesteps, 1) / self.config.batch_size)
        total = _count("total_steps", total_steps, 1) if total_steps is not None else self.config.total_steps
        lock = self._enter_run_dir() if self.dist.is_main else None
        try:
            return self._train(total, evaluate)
        finally:
            if lock is not None:
                lock.release()

    def _enter_run_dir(self) -> RunLock:
        """Lock :attr:`log_dir` and claim it for this run (see :mod:`rlox_dp.run_directory`)."""
        lock = RunLock(self.log_dir).acquire()
        try:
            claim_run_dir(self.log_dir, self.run_id, self.state.step, overwrite=self.overwrite,
                          info={"algorithm": self.algorithm_name, "env": self.env_id,
                                "resumed_from": self.resumed_from})
        except BaseException:
            lock.release()
            raise
        self.overwrite = False  # from now on the directory is this run's
        return lock

    def _save_run_checkpoint(self) -> Path:
        """``<log_dir>/checkpoints/step_<step>.safetensors``, ``last`` pointed at it, old ones pruned."""
        return write_step_checkpoint(self.log_dir, self.state.step, self.save, self.config.keep_last_n)

    def _train(self, total: int, evaluate: bool) -> dict[str, float]:
        buffer = self.buffer
        cfg = self.config
        self._configure_threads(cfg.batch_size // self.dist.world_size, "training")
        threads_checked = time.perf_counter()
        writer = self._writer_or_none() if self.dist.is_main else _NullWriter()
        self.policy.train()
        metrics: dict[str, float] = {}
        recent: list[torch.Tensor] = []
        t0 = time.perf_counter()
        start = self.state.step
        bar = tqdm(total=total, initial=start, desc=f"{self.algorithm_name} {self.env_id}",
                   disable=not (self.progress and self.dist.is_main), dynamic_ncols=True, leave=False)
        interrupted = False
        eval_time = 0.0  # in-loop evaluations, excluded from the training time
        snapshot, step = self.state.snapshot(), self.state.step
        try:
            while self.state.step < total:
                step = self.state.step
                snapshot = self.state.snapshot()  # so Ctrl-C mid-step resumes exactly
                lr = lr_at(step, cfg.lr, cfg.lr_warmup_steps, total, cfg.lr_scheduler)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                # The same global batch of windows on every rank; each trains on its own slice.
                # Indices are drawn on the training device whatever buffer_device is, so a host
                # buffer trains on exactly the same windows as a device buffer.
                indices = torch.randint(len(buffer), (cfg.batch_size,), device=self.device,
                                        generator=self.state.data_generator).to(buffer.device)
                part = self.dist.local_slice(cfg.batch_size)
                batch = buffer.window(indices[part])
                if batch.action.device != self.device:  # buffer_device="cpu": pinned, async copy
                    if self.device.type == "cuda":
                        batch = batch.pin_memory()
                    batch = batch.to(self.device, non_blocking=True)
                self.policy.global_batch = (cfg.batch_size, part.start) if self.dist.enabled else None
                loss, info = self._train_step(batch)
                if not torch.isfinite(self.dist.all_reduce_sum(loss)):
                    raise NonFiniteLossError(
                        f"non-finite training loss ({loss.item()}) at step {step}; stopped without "
                        f"updating the weights. The last good checkpoint in {self.log_dir} is kept. "
                        "Lower the learning rate or check the demonstrations."
                    )
                self.optimizer.zero_grad(set_to_none=True)
                if self._scaler is not None:  # fp16: scaled loss; steps with inf/NaN grads skipped
                    self._scaler.scale(loss).backward()
                    self._scaler.unscale_(self.optimizer)
                else:
                    loss.backward()
                grad_norm = (torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip_norm)
                             if cfg.grad_clip_norm is not None else None)
                if self._scaler is not None:
                    self._scaler.step(self.optimizer)
                    self._scaler.update()
                else:
                    self.optimizer.step()
                decay = self.ema.update(self.policy) if self.ema is not None else None
                self.state.step += 1
                recent.append(loss.detach())
                if self.state.step % cfg.log_every == 0 or self.state.step == total:
                    mean_loss = self._global_mean(recent)
                    recent.clear()
                    metrics["loss"] = mean_loss
                    writer.add_scalar("train/loss", mean_loss, self.state.step)
                    writer.add_scalar("train/lr", lr, self.state.step)
                    for k, v in info.items():
                        writer.add_scalar(f"train/{k}", float(v), self.state.step)
                    if grad_norm is not None:
                        writer.add_scalar("train/grad_norm", float(grad_norm), self.state.step)
                    if decay is not None:
                        writer.add_scalar("train/ema_decay", decay, self.state.step)
                    bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}")
                    if self.threads is None and time.perf_counter() - threads_checked > threads_module.RECHECK_S:
                        # The load may have changed since the last choice (automatic mode only).
                        self._configure_threads(cfg.batch_size // self.dist.world_size, "training")
                        threads_checked = time.perf_counter()
                bar.update(1)
                if self.state.step % cfg.checkpoint_every == 0 and self.state.step < total and self.dist.is_main:
                    self._save_run_checkpoint()
                if (cfg.eval_every and self.state.step % cfg.eval_every == 0 and self.state.step < total
                        and self.dist.is_main):
                    eval_start = time.perf_counter()
                    self._log_eval(self._evaluate_in_loop(), writer)
                    eval_time += time.perf_counter() - eval_start
                    self.policy.train()
        except KeyboardInterrupt:
            interrupted = True
            if self.state.step == step:  # the interrupted step never reached the optimizer
                self.state.restore(snapshot)
            if self.dist.is_main:
                path = self._save_run_checkpoint()
                logger.warning("interrupted at step %d; checkpoint saved to %s", self.state.step, path)
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0 - eval_time
        if recent:
            metrics["loss"] = self._global_mean(recent)
        metrics.update(step=float(self.state.step), train_time_s=elapsed,
                       steps_per_s=(self.state.step - start) / max(elapsed, 1e-9),
                       interrupted=float(interrupted))
        metrics.update({f"expert/{k[len('expert_'):]}": v for k, v in self.demo_info.items()})
        if not interrupted and self.dist.is_main:
            self._save_run_checkpoint()
            if evaluate and cfg.n_eval_episodes > 0:
                from rlox_dp.evaluation import EvaluationInterrupted

                try:
                    metrics.update(self._log_eval(self.evaluate(), writer))
                except EvaluationInterrupted as stop:  # the trained state is saved already
                    metrics["interrupted"] = 1.0
                    metrics.update(stop.summary())
                    logger.warning("final evaluation interrupted after %d of %d episodes",
                                   stop.n_finished, stop.n_requested)
        writer.flush()
        self.dist.barrier()
        return metrics

    def _global_mean(self, losses: list[torch.Tensor]) -> float:
        """Mean of the recent per-step losses over steps and ranks (the global batch's loss)."""
        return self.dist.all_reduce_sum(torch.stack(losses).mean()).item() / self.dist.world_size

    def _log_eval(self, summary: dict[str, float], writer) -> dict[str, float]:
        self.eval_history.append({"step": float(self.state.step), **summary})
        logger.info("step %d: %s", self.state.step,
                    ", ".join(f"{k[5:]} {v:.4g}" for k, v in summary.items() if k.startswith("eval/")))
        for k, v in summary.items():
            writer.add_scalar(k, v, self.state.step)
        return summary

    def _evaluate_in_loop(self) -> dict[str, float]:
        """:meth:`evaluate` during training: if it raises (Ctrl-C is the loop's business), the
        training state is saved before the error propagates."""
        try:
            return self.evaluate()
        except Exception:
            path = self._save_run_checkpoint()
            logger.error("evaluation at step %d failed; the training state was saved to %s first",
                         self.state.step, path)
            raise

    def evaluate(self, n_episodes: int | None = None, n_envs: int | None = None, *,
                 seed: int | None = None, video_dir: str | os.PathLike | None = None,
                 n_videos: int = 0) -> dict[str, float]:
        """Evaluate the (EMA) policy on ``n_episodes`` episodes with seeds ``seed, seed+1, ...``.

        Returns:
            ``EvalResult.summary()``: ``eval/return_mean``, ``eval/success_rate`` (when the env
            reports success), ``eval/score_mean`` (PushT coverage score) ...

        Raises:
            rlox_dp.evaluation.EvaluationInterrupted: Ctrl-C; its ``summary()`` covers the
                episodes finished before it.
        """
        from rlox_dp.evaluation import evaluate_policy

        n_episodes = _count("n_episodes", self.config.n_eval_episodes if n_episodes is None else n_episodes, 1)
        n_envs = _count("n_envs", self.config.n_eval_envs if n_envs is None else n_envs, 1)
        seed = _count("seed", self.config.eval_seed if seed is None else seed, 0)
        n_videos = _count("n_videos", n_videos, 0)
        if video_dir is not None and n_videos > 0:
            check_writable_dir("video_dir", video_dir)
        policy = self.eval_policy
        was_training = policy.training
        policy.eval()
        policy.reset()
        threads_before = self._configure_threads(n_envs, "evaluation")
        try:
            result = evaluate_policy(
                policy, self.env_id, n_episodes=n_episodes, n_envs=n_envs, seed=seed,
                env_kwargs=self.env_kwargs, video_dir=None if video_dir is None else str(video_dir),
                n_videos=n_videos, progress=self.progress,
            )
        finally:
            policy.reset()
            policy.train(was_training)
            restore_threads(threads_before)
        self.last_eval = result
        return result.summary()

    def _configure_threads(self, batch: int, what: str) -> int:
        """Choose the torch threads for ``what`` on ``batch`` samples; returns the count before."""
        before = torch.get_num_threads()
        flops = self._flops_per_sample * batch if self._flops_per_sample is not None else None
        configure_threads(self.threads, self.device, flops, what)
        return before

    # -- checkpoints ----------------------------------------------------------------------------
    def save_policy(self, path: str | os.PathLike) -> Path:
        """The policy alone, to act with anywhere: EMA weights (when on), normalizer, config,
        spaces and env id, without optimizer or RNG states; read it with :func:`rlox_dp.load_policy`."""
        return self.eval_policy.save(path, env=self.env_id, env_kwargs=self.env_kwargs)

    def save(self, path: str | os.PathLike) -> Path:
        """Atomically write weights, EMA weights, optimizer, normalizer, RNG states, step, config
        (with integrity digests) to the file ``path``; returns it.

        Raises:
            ValueError: ``path`` is empty or an existing directory.
        """
        if not isinstance(path, (str, os.PathLike)) or str(path) in ("", "."):
            raise ValueError(f"save: path must name a .safetensors file, got {path!r}")
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"save: {str(path)!r} is a directory; give a file path such as "
                             f"{str(path / 'checkpoint.safetensors')!r}")
        tensors = {f"policy/{k}": v for k, v in self.policy.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema/{k}": v for k, v in self.ema.model.state_dict().items()})
        opt_tensors, opt_meta = optimizer_state_to_tensors(self.optimizer.state_dict())
        tensors.update(opt_tensors)
        tensors.update(self.state.rng_tensors())
        meta = {
            **self.describe(),
            "config": self.config.to_dict(),
            "step": self.state.step,
            "ema_step": self.ema.step if self.ema is not None else None,
            "optimizer": opt_meta,
            "normalizer": self.policy.normalizer.spec(),
            "observation_space": space_to_json(self.observation_space),
            "action_space": space_to_json(self.action_space),
            "demos": str(self.demos_source) if self.demos_source is not None else None,
            "demo_info": self.demo_info,
            "log_dir": str(self.log_dir),
            "run_id": self.run_id,
            "grad_scaler": self._scaler.state_dict() if self._scaler is not None else None,
        }
        save_checkpoint(path, tensors, meta)
        return path

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
        tensors, meta = load_checkpoint(path)
        if meta.get("kind") == POLICY_KIND:
            raise CheckpointError(
                f"{str(path)!r} is a policy file (weights only, no optimizer or training state): act or "
                "evaluate with rlox_dp.load_policy(path) / rlox-dp eval; continue training from a "
                "training checkpoint"
            )
        validate_trainer_header(meta, path)
        try:
            algorithm_class = get_algorithm_class(meta["algorithm"])
            config = algorithm_class.config_class.from_dict(meta["config"])
            normalizer = Normalizer.from_spec(meta["normalizer"])
        except (KeyError, ConfigError, ValueError, TypeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} has an invalid or incompatible header: {err}") from None
        trainer = cls.__new__(cls)
        resume = {"run_id": meta.get("run_id") or (legacy_run_id(meta["log_dir"]) if meta.get("log_dir") else None),
                  "step": meta["step"], "log_dir": meta.get("log_dir"), "path": str(path)}
        trainer._init_from_checkpoint(meta, config, normalizer, demos, device, log_dir, cache_dir, progress,
                                      resume, overwrite)
        trainer._load_tensors(tensors, meta, path)
        return trainer

    def _init_from_checkpoint(self, meta, config, normalizer, demos, device, log_dir, cache_dir, progress,
                              resume, overwrite):
        demos = demos if demos is not None else meta.get("demos")
        self.__init__(
            meta["algorithm"], meta["env"], config=config, demos=demos, seed=meta["seed"],
            device=device, log_dir=log_dir, env_kwargs=meta.get("env_kwargs"), cache_dir=cache_dir,
            progress=progress, overwrite=overwrite, _normalizer=normalizer, _resume=resume,
        )
        self.demo_info = dict(meta.get("demo_info") or {})
        obs_space = space_from_json(meta["observation_space"])
        act_space = space_from_json(meta["action_space"])
        if obs_space != self.observation_space or act_space != self.action_space:
            raise CheckpointError(
                f"checkpoint spaces {obs_space}, {act_space} differ from env {self.env_id!r}'s "
                f"{self.observation_space}, {self.action_space}"
            )

    def _load_tensors(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], path) -> None:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        try:
            self.policy.load_state_dict(part("policy/"))
            if self.ema is not None:
                ema_state = part("ema/")
                self.ema.model.load_state_dict(ema_state if ema_state else part("policy/"))
                self.ema.step = int(meta.get("ema_step") or meta["step"])
            self.optimizer.load_state_dict(optimizer_state_from_tensors(tensors, meta["optimizer"]))
            if self._scaler is not None and meta.get("grad_scaler"):
                self._scaler.load_state_dict(meta["grad_scaler"])
            self.state.load_rng_tensors(tensors)
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r} does not fit this model/config: {err}") from None
        self.state.step = int(meta["step"])
