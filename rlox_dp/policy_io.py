"""Policy files: a trained policy alone, to act with anywhere (no optimizer, env or Trainer).

    trainer.eval_policy.save("policy.safetensors", env=trainer.env_id)   # the EMA weights
    policy = load_policy("policy.safetensors")                            # or a training checkpoint
    action, _ = policy.predict(obs)

A policy file is a checkpoint of :mod:`rlox_dp.checkpoint` (one safetensors file, atomic write,
no pickle, integrity digests) with ``"kind": "policy"`` in its JSON header, the weights under
``policy/...`` (normalizer statistics and action bounds included: they are module buffers), and the
algorithm name, policy config (no training config), normalizer layout, observation/action
spaces and, when saved by a Trainer, its evaluation protocol as JSON. A Trainer checkpoint (weights,
EMA weights, optimizer, RNG states ...) loads as a policy too: its EMA weights by default. Files
written before the policy/training config split (one flat ``"config"``) load too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rlox_dp.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    space_from_json,
    space_to_json,
)

if TYPE_CHECKING:
    from rlox_dp.algorithms import Algorithm

__all__ = ["POLICY_KIND", "load_policy", "save_policy"]

#: ``meta["kind"]`` of a policy-only file (Trainer checkpoints have no ``kind``).
POLICY_KIND = "policy"


def save_policy(policy: Algorithm, path: str | os.PathLike, *, env: str | None = None,
                env_kwargs: Mapping[str, Any] | None = None,
                evaluation: Mapping[str, int] | None = None) -> Path:
    """Write ``policy``'s weights, normalizer, config and spaces to ``path`` (atomically).

    Args:
        policy: any registered :class:`~rlox_dp.algorithms.Algorithm` (its current weights;
            ``trainer.eval_policy`` holds the EMA weights).
        path: the ``.safetensors`` file to write.
        env, env_kwargs: the env id and options the policy acts in, recorded for evaluation.
        evaluation: the evaluation protocol (``TrainingConfig.evaluation_protocol()``:
            ``n_eval_episodes``, ``n_eval_envs``, ``eval_seed``), recorded for ``rlox-dp eval``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tensors = {f"policy/{k}": v for k, v in policy.state_dict().items()}
    meta = {
        "kind": POLICY_KIND,
        "algorithm": policy.name,
        "config": policy.config.to_dict(),
        "normalizer": policy.normalizer.spec(),
        "observation_space": space_to_json(policy.observation_space),
        "action_space": space_to_json(policy.action_space),
        "env": env,
        "env_kwargs": dict(env_kwargs or {}),
        "evaluation": dict(evaluation or {}),
    }
    save_checkpoint(path, tensors, meta)
    return path


def _weights(tensors: dict[str, torch.Tensor], ema: bool) -> dict[str, torch.Tensor]:
    """The ``ema/`` weights of a training checkpoint when asked for and present, else ``policy/``."""
    for prefix in (("ema/", "policy/") if ema else ("policy/",)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if part:
            return part
    return {}


def load_policy(path: str | os.PathLike, device: str | torch.device = "cpu",
                ema: bool = True) -> Algorithm:
    """Rebuild the policy of a policy file or of a Trainer checkpoint, in eval mode, with the
    inference fast paths on (:func:`rlox_dp.acceleration.accelerate`).

    Builds the module without touching torch's global random state.

    Args:
        path: written by :func:`save_policy` / ``Algorithm.save`` or ``Trainer.save``.
        device: where the policy lives (``"cpu"``, ``"cuda"``, ``"auto"`` ...).
        ema: for a Trainer checkpoint, its EMA weights (when it has them) rather than the raw
            training weights; a policy file holds one set of weights.

    Returns:
        The policy (``policy.env_id`` / ``policy.env_kwargs``: the recorded env, or None / {};
        ``policy.evaluation``: the recorded evaluation protocol, or {}).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not an rlox_dp checkpoint, corrupted, or a header / weights that do not
            fit the recorded algorithm and config.
    """
    from rlox_dp.acceleration import accelerate
    from rlox_dp.algorithms import get_algorithm_class
    from rlox_dp.buffers import Normalizer
    from rlox_dp.config import ConfigError
    from rlox_dp.runtime import resolve_device
    from rlox_dp.training.config import evaluation_protocol_from_header, policy_values_from_header

    tensors, meta = load_checkpoint(path)
    try:
        cls = get_algorithm_class(meta["algorithm"])
        config = cls.config_class.from_dict(policy_values_from_header(cls.config_class, meta))
        normalizer = Normalizer.from_spec(meta["normalizer"])
        observation_space = space_from_json(meta["observation_space"])
        action_space = space_from_json(meta["action_space"])
        with torch.random.fork_rng(devices=[]):  # weight init must not shift the user's RNG
            policy = cls(config, observation_space, action_space, normalizer)
    except (KeyError, TypeError, ConfigError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} has an invalid or incompatible policy header: {err}") from None
    weights = _weights(tensors, ema)
    try:
        policy.load_state_dict(weights)
    except RuntimeError as err:
        raise CheckpointError(f"{str(path)!r}: the weights do not fit the recorded "
                              f"{meta['algorithm']!r} config: {err}") from None
    policy.env_id = meta.get("env")
    policy.env_kwargs = dict(meta.get("env_kwargs") or {})
    policy.evaluation = evaluation_protocol_from_header(cls.config_class, meta)
    return accelerate(policy.to(resolve_device(device)).eval())
