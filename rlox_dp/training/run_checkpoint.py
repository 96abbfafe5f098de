"""A training run in one checkpoint file, and back: what ``Trainer.save`` / ``Trainer.load`` do.

A run checkpoint (one ``.safetensors`` file, :mod:`rlox_dp.checkpoint`) holds the weights
(``policy/...``), the EMA weights (``ema/...``), the optimizer state, the RNG states of the run's
two generators and of torch, and a JSON header with the algorithm, env, seed, step, config,
normalizer, spaces, demonstrations path, run id and GradScaler state: everything to resume
bit-exactly (:meth:`rlox_dp.Trainer.load`), nothing pickled.

    save_run(trainer, path)
    run = read_run(path)                 # validated header, config, normalizer
    trainer = Trainer(run.algorithm, run.env, config=run.config, ...)
    restore_run(trainer, run)            # spaces checked, tensors loaded

(the last three lines are :func:`load_run`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlox_dp.algorithms import PolicyConfig, get_algorithm_class
from rlox_dp.buffers import Normalizer
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
from rlox_dp.policy_io import POLICY_KIND
from rlox_dp.run_directory import legacy_run_id
from rlox_dp.training.config import TrainingConfig, configs_from_header

if TYPE_CHECKING:
    from rlox_dp.trainer import Trainer

__all__ = ["RunCheckpoint", "load_run", "read_run", "restore_run", "save_run"]


def save_run(trainer: Trainer, path: str | os.PathLike) -> Path:
    """Atomically write ``trainer``'s weights, EMA weights, optimizer, normalizer, RNG states,
    step and config (with integrity digests) to the file ``path``; returns it.

    Raises:
        ValueError: ``path`` is empty or an existing directory.
    """
    if not isinstance(path, (str, os.PathLike)) or str(path) in ("", "."):
        raise ValueError(f"save: path must name a .safetensors file, got {path!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"save: {str(path)!r} is a directory; give a file path such as "
                         f"{str(path / 'checkpoint.safetensors')!r}")
    step_state = trainer.train_step.state_dict()
    tensors = {f"policy/{k}": v for k, v in trainer.policy.state_dict().items()}
    if trainer.ema is not None:
        tensors.update({f"ema/{k}": v for k, v in trainer.ema.model.state_dict().items()})
    opt_tensors, opt_meta = optimizer_state_to_tensors(step_state["optimizer"])
    tensors.update(opt_tensors)
    tensors.update(trainer.state.rng_tensors())
    meta = {
        **trainer.describe(),
        "step": trainer.state.step,
        "ema_step": trainer.ema.step if trainer.ema is not None else None,
        "optimizer": opt_meta,
        "normalizer": trainer.policy.normalizer.spec(),
        "observation_space": space_to_json(trainer.observation_space),
        "action_space": space_to_json(trainer.action_space),
        "demos": str(trainer.demos_source) if trainer.demos_source is not None else None,
        "demo_info": trainer.demo_info,
        "log_dir": str(trainer.log_dir),
        "run_id": trainer.run_id,
        "grad_scaler": step_state["grad_scaler"],
    }
    save_checkpoint(path, tensors, meta)
    return path


@dataclass(frozen=True)
class RunCheckpoint:
    """A run checkpoint read and validated by :func:`read_run` (tensors still to be loaded).

    Attributes:
        path: the file.
        tensors: every tensor by name (CPU).
        meta: the JSON header.
        config: the algorithm's policy config, rebuilt and validated.
        training: the run's training config (split from the one flat ``"config"`` of a checkpoint
            written before the policy/training split).
        normalizer: the normalizer the policy was trained with.
        resume: what a resumed :class:`~rlox_dp.Trainer` needs (run id, step, run directory, path).
    """

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    config: PolicyConfig
    training: TrainingConfig
    normalizer: Normalizer
    resume: dict[str, Any]


def read_run(path: str | os.PathLike) -> RunCheckpoint:
    """Read and validate the run checkpoint ``path``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is corrupted (integrity digests), a policy file rather than a
            run checkpoint, or has an invalid or incompatible header.
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
        config, training = configs_from_header(get_algorithm_class(meta["algorithm"]).config_class, meta)
        normalizer = Normalizer.from_spec(meta["normalizer"])
    except (KeyError, ConfigError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(path)!r} has an invalid or incompatible header: {err}") from None
    run_id = meta.get("run_id") or (legacy_run_id(meta["log_dir"]) if meta.get("log_dir") else None)
    resume = {"run_id": run_id, "step": meta["step"], "log_dir": meta.get("log_dir"), "path": str(path)}
    return RunCheckpoint(Path(path), tensors, meta, config, training, normalizer, resume)


def restore_run(trainer: Trainer, run: RunCheckpoint) -> None:
    """Load ``run``'s tensors and state into ``trainer`` (built from its header).

    Raises:
        CheckpointError: the env's spaces differ from the checkpoint's, or the tensors do not fit
            the model, optimizer or RNG states.
    """
    meta, tensors = run.meta, run.tensors
    obs_space, act_space = space_from_json(meta["observation_space"]), space_from_json(meta["action_space"])
    if obs_space != trainer.observation_space or act_space != trainer.action_space:
        raise CheckpointError(
            f"checkpoint spaces {obs_space}, {act_space} differ from env {trainer.env_id!r}'s "
            f"{trainer.observation_space}, {trainer.action_space}"
        )
    trainer.demo_info = dict(meta.get("demo_info") or {})

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        trainer.policy.load_state_dict(part("policy/"))
        if trainer.ema is not None:
            ema_state = part("ema/")
            trainer.ema.model.load_state_dict(ema_state if ema_state else part("policy/"))
            trainer.ema.step = int(meta.get("ema_step") or meta["step"])
        trainer.train_step.load_state_dict({
            "optimizer": optimizer_state_from_tensors(tensors, meta["optimizer"]),
            "grad_scaler": meta.get("grad_scaler"),
        })
        trainer.state.load_rng_tensors(tensors)
    except (RuntimeError, KeyError, ValueError, TypeError) as err:
        raise CheckpointError(f"checkpoint {str(run.path)!r} does not fit this model/config: {err}") from None
    trainer.state.step = int(meta["step"])


def load_run(trainer_class: type[Trainer], path: str | os.PathLike, *, demos: Any, device: str | torch.device,
             log_dir: str | os.PathLike | None, cache_dir: str | os.PathLike | None, progress: bool,
             overwrite: bool) -> Trainer:
    """A ``trainer_class`` rebuilt from the run checkpoint ``path`` (:meth:`rlox_dp.Trainer.load`):
    built from its header (``demos`` defaults to the recorded path), then :func:`restore_run`.

    Raises:
        CheckpointError: as :func:`read_run` and :func:`restore_run`.
    """
    run = read_run(path)
    meta = run.meta
    trainer = trainer_class(
        meta["algorithm"], meta["env"], config=run.config, training=run.training,
        demos=demos if demos is not None else meta.get("demos"), seed=meta["seed"], device=device,
        log_dir=log_dir, env_kwargs=meta.get("env_kwargs"), cache_dir=cache_dir, progress=progress,
        overwrite=overwrite, _normalizer=run.normalizer, _resume=run.resume,
    )
    restore_run(trainer, run)
    return trainer
