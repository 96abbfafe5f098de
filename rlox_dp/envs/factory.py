"""Build Gymnasium environments with dictionary observations, single or vectorized.

Everything inside rlox_dp sees observations as ``dict[str, np.ndarray]``. Environments whose
observation space is a ``Box`` are wrapped so that the array becomes ``{"state": obs}``;
``Dict`` observation spaces pass through unchanged. Only continuous (``Box``) action spaces are
supported: Diffusion Policy regresses real-valued action chunks.

An env with a registered :class:`~rlox_dp.envs.spec.EnvSpec` is built by the spec (PushT by
:func:`rlox_dp.envs.pusht.make_pusht_env`); other ids go to ``gym.make``, and ids of the form
``"module:EnvId"`` import ``module`` first (Gymnasium's convention) so that third-party packages
can register their environments.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from rlox_dp.envs.spec import ENV_REGISTRY, EnvSpec, find_env_spec

__all__ = ["STATE_KEY", "StateDictObservation", "env_spaces", "make_env", "make_vec_env"]

STATE_KEY = "state"
"""Observation key under which ``Box`` observations are exposed."""


class StateDictObservation(gym.ObservationWrapper):
    """Expose a ``Box`` observation ``(*obs_shape)`` as ``{"state": obs}``."""

    def __init__(self, env: gym.Env) -> None:
        if not isinstance(env.observation_space, gym.spaces.Box):
            raise TypeError(
                f"StateDictObservation expects an env with a Box observation space, "
                f"got {env.observation_space!r}"
            )
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({STATE_KEY: env.observation_space})

    def observation(self, observation: np.ndarray) -> dict[str, np.ndarray]:
        """Return ``{"state": observation}``."""
        return {STATE_KEY: observation}


def _import_env_module(module: str) -> None:
    """Import a module for its side effect of registering environments."""
    if module == "gym_pusht":
        # pygame prints a banner on import unless this is set beforehand.
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    importlib.import_module(module)


def _check_registered(env_id: str, spec_ids: list[str]) -> None:
    """Raise a ValueError with close matches (among Gymnasium's ids and ``spec_ids``, the ids
    with an env spec) if ``env_id`` is not in Gymnasium's registry."""
    if env_id in gym.registry:
        return
    known = list(dict.fromkeys([*gym.registry.keys(), *spec_ids]))
    matches = difflib.get_close_matches(env_id, known, n=5, cutoff=0.6)
    hint = f" Did you mean one of {matches}?" if matches else ""
    raise ValueError(f"env: unknown environment id {env_id!r}.{hint}")


def _as_dict_env(env: gym.Env, env_id: str) -> gym.Env:
    """Check the action space is continuous and give the env a ``Dict`` observation space."""
    action_space = env.action_space
    if not isinstance(action_space, gym.spaces.Box):
        env.close()
        raise ValueError(
            f"env: only continuous Box action spaces are supported, but {env_id!r} has "
            f"action space {action_space!r} ({type(action_space).__name__})"
        )
    obs_space = env.observation_space
    if isinstance(obs_space, gym.spaces.Dict):
        return env
    if isinstance(obs_space, gym.spaces.Box):
        return StateDictObservation(env)
    env.close()
    raise ValueError(
        f"env: observation space must be a Box or a Dict of Boxes, but {env_id!r} has "
        f"{obs_space!r} ({type(obs_space).__name__})"
    )


def make_env(
    env_id: str,
    *,
    render_mode: str | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    max_episode_steps: int | None = None,
) -> gym.Env:
    """Create one environment whose observations are ``dict[str, np.ndarray]``.

    Args:
        env_id: a Gymnasium id (``"Pendulum-v1"``, ``"rlox_dp/BimodalPoint-v0"``,
            ``"gym_pusht/PushT-v0"``, or ``"module:EnvId"``).
        render_mode: passed to the env (``"rgb_array"`` for videos).
        env_kwargs: extra keyword arguments for the env constructor.
        max_episode_steps: overrides the registered time limit when given.

    Returns:
        The env; its observation space is a ``gym.spaces.Dict`` (a ``Box`` env gets the single
        key ``"state"`` with the original ``(D_obs,)`` observation) and its action space a
        ``gym.spaces.Box`` ``(D_act,)``.

    Raises:
        ValueError: unknown ``env_id`` (close matches are listed) or a non-Box action space.
    """
    if not isinstance(env_id, str):
        raise TypeError(f"env: expected an env id string, got {type(env_id).__name__}")
    if max_episode_steps is not None and max_episode_steps <= 0:
        raise ValueError(f"max_episode_steps: expected a positive int, got {max_episode_steps}")
    kwargs = dict(env_kwargs or {})

    spec = find_env_spec(env_id)
    if spec is None:
        if ":" in env_id:
            module, env_id = env_id.split(":", maxsplit=1)
            _import_env_module(module)
        _check_registered(env_id, ENV_REGISTRY.names())
        spec = find_env_spec(env_id) or EnvSpec.generic(env_id)
    env = spec.make_env(render_mode=render_mode, max_episode_steps=max_episode_steps, **kwargs)
    return _as_dict_env(env, env_id)


def make_vec_env(
    env_id: str,
    n_envs: int,
    seed: int | None = None,
    *,
    asynchronous: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
    render_mode: str | None = None,
    max_episode_steps: int | None = None,
    autoreset_mode: AutoresetMode | str = AutoresetMode.NEXT_STEP,
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> gym.vector.VectorEnv:
    """Create ``n_envs`` copies of :func:`make_env` in a Gymnasium vector env.

    Observations come batched as ``dict[str, (n_envs, *obs_shape)]`` and actions are expected as
    ``(n_envs, D_act)``.

    Args:
        env_id: see :func:`make_env`.
        n_envs: number of sub-environments (>= 1).
        seed: when given, the vector env is reset once with seeds ``seed + i`` for sub-env ``i``
            (and its action space seeded with ``seed``), so that later resets without a seed
            continue deterministically. When None the env is returned un-reset.
        asynchronous: one subprocess per env (``AsyncVectorEnv``) instead of a loop in this
            process (``SyncVectorEnv``). Worth it only for slow envs.
        env_kwargs, render_mode, max_episode_steps: passed to :func:`make_env`.
        autoreset_mode: Gymnasium's autoreset mode (``"NextStep"``, ``"SameStep"`` or
            ``"Disabled"``); see https://farama.org/Vector-Autoreset-Mode.
        wrapper: optional callable applied to each sub-env after :func:`make_env`
            (it must be picklable when ``asynchronous``).
    """
    if not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
        raise ValueError(f"n_envs: expected a positive int, got {n_envs!r}")
    try:
        mode = AutoresetMode(autoreset_mode)
    except ValueError:
        raise ValueError(
            f"autoreset_mode: expected one of {[m.value for m in AutoresetMode]}, "
            f"got {autoreset_mode!r}"
        ) from None
    make_one = partial(
        _make_wrapped_env,
        env_id,
        render_mode=render_mode,
        env_kwargs=dict(env_kwargs or {}),
        max_episode_steps=max_episode_steps,
        wrapper=wrapper,
    )
    if not asynchronous:
        envs: gym.vector.VectorEnv = SyncVectorEnv([make_one] * int(n_envs), autoreset_mode=mode)
    else:
        make_one().close()  # fail fast in this process rather than inside a worker
        envs = AsyncVectorEnv([make_one] * int(n_envs), autoreset_mode=mode)
    if seed is not None:
        envs.reset(seed=int(seed))
        envs.action_space.seed(int(seed))
    return envs


def _make_wrapped_env(
    env_id: str,
    *,
    render_mode: str | None,
    env_kwargs: Mapping[str, Any],
    max_episode_steps: int | None,
    wrapper: Callable[[gym.Env], gym.Env] | None,
) -> gym.Env:
    env = make_env(
        env_id, render_mode=render_mode, env_kwargs=env_kwargs, max_episode_steps=max_episode_steps
    )
    return env if wrapper is None else wrapper(env)


def env_spaces(
    env_id: str, env_kwargs: Mapping[str, Any] | None = None
) -> tuple[gym.spaces.Dict, gym.spaces.Box]:
    """Return the single-env ``(observation_space, action_space)`` of :func:`make_env`.

    The observation space is a ``Dict`` (key -> ``Box`` of shape ``obs_shape``), the action space
    a ``Box`` of shape ``(D_act,)``. The env is created and closed.
    """
    env = make_env(env_id, env_kwargs=env_kwargs)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()
