"""What a :class:`~rlox_dp.Trainer` builds from its arguments before it trains, each checked.

- :func:`run_settings`: the policy and training configs (a flat dict split by owner, the env's
  preset under it, the env's observation-mode key moved to the env kwargs), the seed, the device
  and the torch threads, as one :class:`RunSettings`;
- :func:`checked_env_spaces`: the env's observation and action spaces, refused when rlox_dp
  cannot act in them;
- :func:`check_global_batch`: the batch size against the number of processes;
- :func:`check_count` / :func:`total_steps_for`: integer arguments (steps, episodes ...) checked
  with their names.

The demonstrations it trains on: :mod:`rlox_dp.training.data`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from rlox_dp.config import ConfigError
from rlox_dp.dagger_config import DAggerConfig, pop_dagger_config
from rlox_dp.runtime import resolve_device
from rlox_dp.training.config import TrainingConfig, build_configs

if TYPE_CHECKING:
    from rlox_dp.algorithms import Algorithm, PolicyConfig
    from rlox_dp.envs.spec import EnvSpec

__all__ = ["RunSettings", "check_count", "check_global_batch", "checked_env_spaces", "run_settings",
           "total_steps_for"]


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (not a bool, float or string), else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def total_steps_for(total_steps: Any, total_timesteps: Any, training: TrainingConfig) -> int:
    """The gradient steps of ``Trainer.train(total_steps, total_timesteps=...)``: ``total_steps``,
    or ``ceil(total_timesteps / batch_size)``, or ``training.total_steps`` when neither is given.

    Raises:
        ValueError: both given, or a count that is not an int >= 1.
    """
    if total_steps is not None and total_timesteps is not None:
        raise ValueError("give total_steps or total_timesteps, not both")
    if total_timesteps is not None:
        total_steps = math.ceil(check_count("total_timesteps", total_timesteps, 1) / training.batch_size)
    return check_count("total_steps", total_steps, 1) if total_steps is not None else training.total_steps


@dataclass(frozen=True)
class RunSettings:
    """A run's settings, resolved from the Trainer's arguments.

    Attributes:
        config: the algorithm's policy config.
        training: the resolved :class:`TrainingConfig` (policy defaults filled in).
        env_kwargs: the env factory's kwargs, with the observation mode a config dict named.
        seed: the run's seed (``seed=`` or the config's ``"seed"``; default 0).
        device: the resolved torch device.
        threads: torch threads (``threads=`` or the config's ``"threads"``); None: chosen per phase.
        dagger: the config's ``dagger_<field>`` keys as a DAgger config (None: no DAgger).
    """

    config: PolicyConfig
    training: TrainingConfig
    env_kwargs: dict[str, Any]
    seed: int
    device: torch.device
    threads: int | None
    dagger: DAggerConfig | None = None


def run_settings(
    algorithm_class: type[Algorithm], spec: EnvSpec, config: Any, training: Any, *,
    env_kwargs: Mapping[str, Any] | None, seed: int | None, device: str | torch.device,
    threads: int | None, use_preset: bool,
) -> RunSettings:
    """The policy and training configs (:func:`~rlox_dp.training.config.build_configs`), the seed,
    the device and the threads of a run.

    A dict ``config`` may also hold ``seed``, ``threads`` (a run setting, not saved), the env's
    observation-mode key (PushT's ``obs``, moved to the env kwargs) and ``dagger_<field>`` keys
    (:func:`~rlox_dp.dagger_config.pop_dagger_config`; not saved); with ``use_preset``, the env
    spec's preset for the algorithm (in the selected observation mode) goes under the config.
    ``device`` ``"auto"`` picks the GPU of this torchrun rank (``LOCAL_RANK``).

    Raises:
        ConfigError: a config error (naming the field), or ``seed`` / ``threads`` given both as an
            argument and in the config with different values.
        ValueError: an unknown or unavailable device.
    """
    env_kwargs = dict(env_kwargs or {})
    config_seed = config_threads = dagger = None
    if isinstance(config, Mapping):
        values = dict(config)
        dagger = pop_dagger_config(values)
        config_seed = values.pop("seed", None)
        config_threads = values.pop("threads", None)
        env_kwargs.update(spec.pop_env_config(values))  # "obs": the env's observation mode
        config = values
    preset = spec.preset(algorithm_class.name, spec.obs_mode(env_kwargs)) if use_preset else None
    policy, run = build_configs(algorithm_class.config_class, config, training, preset)
    if seed is not None and config_seed is not None and seed != config_seed:
        raise ConfigError(f"seed given twice with different values: seed={seed}, config seed={config_seed}")
    seed = int(seed if seed is not None else (config_seed if config_seed is not None else 0))
    resolved = resolve_device(device, local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if threads is not None and config_threads is not None and threads != config_threads:
        raise ConfigError(f"threads given twice with different values: threads={threads}, "
                          f"config threads={config_threads}")
    return RunSettings(policy, run, env_kwargs, seed, resolved, threads if threads is not None else config_threads, dagger)


def check_global_batch(training: TrainingConfig, world_size: int) -> None:
    """Refuse a ``batch_size`` (the global batch) that the ``world_size`` processes cannot split evenly."""
    if training.batch_size % world_size:
        raise ConfigError(
            f"config field 'batch_size' ({training.batch_size}) is the global batch and must be "
            f"divisible by the number of processes ({world_size})"
        )


def checked_env_spaces(env_id: str, env_kwargs: Mapping[str, Any]) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    """The env's ``(observation Dict space, action Box)`` (:func:`rlox_dp.envs.env_spaces`).

    Raises:
        ValueError: the env's module cannot be imported, or an observation key is not a Box
            (nested Dicts: flatten them with a gymnasium ObservationWrapper).
    """
    from rlox_dp.envs import env_spaces

    try:
        obs_space, action_space = env_spaces(env_id, env_kwargs=env_kwargs)
    except ImportError as err:  # "module:EnvId" whose module is not installed
        raise ValueError(f"env {env_id!r}: cannot import its module: {err}") from None
    nested = [k for k, v in obs_space.spaces.items() if not isinstance(v, gym.spaces.Box)]
    if nested:
        raise ValueError(
            f"env {env_id!r}: observation keys {nested} are not Box spaces "
            f"({[type(obs_space[k]).__name__ for k in nested]}); rlox_dp takes a Box or a flat "
            "Dict of Boxes (flatten nested Dicts with a gymnasium ObservationWrapper)"
        )
    return obs_space, action_space
