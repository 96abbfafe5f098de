"""Environments: the factory (state dicts, vector envs), env specs, PushT and the bimodal env.

Importing this package registers ``"rlox_dp/BimodalPoint-v0"`` with Gymnasium and the built-in
env specs (:mod:`rlox_dp.envs.builtin`); register your own with :func:`register_env`.
"""

from __future__ import annotations

import gymnasium as gym

from rlox_dp.envs.bimodal import BIMODAL_ENV_ID, BimodalPointEnv

if BIMODAL_ENV_ID not in gym.registry:
    gym.register(
        id=BIMODAL_ENV_ID,
        entry_point="rlox_dp.envs.bimodal:BimodalPointEnv",
        max_episode_steps=100,
    )

import rlox_dp.envs.builtin  # noqa: E402, F401  (registers the built-in env specs)
from rlox_dp.envs.factory import STATE_KEY, env_spaces, make_env, make_vec_env  # noqa: E402
from rlox_dp.envs.spec import (  # noqa: E402
    ENV_REGISTRY,
    EnvSpec,
    available_envs,
    env_spec,
    register_env,
)

__all__ = [
    "BIMODAL_ENV_ID",
    "ENV_REGISTRY",
    "STATE_KEY",
    "BimodalPointEnv",
    "EnvSpec",
    "available_envs",
    "env_spaces",
    "env_spec",
    "make_env",
    "make_vec_env",
    "register_env",
]
