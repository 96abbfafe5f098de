"""Environments: the factory (state dicts, vector envs), PushT and the bimodal benchmark env.

Importing this package registers ``"rlox_dp/BimodalPoint-v0"`` with Gymnasium.
"""

from __future__ import annotations

import gymnasium as gym

from rlox_dp.envs.bimodal import BIMODAL_ENV_ID, BimodalPointEnv, BimodalPointExpert

if BIMODAL_ENV_ID not in gym.registry:
    gym.register(
        id=BIMODAL_ENV_ID,
        entry_point="rlox_dp.envs.bimodal:BimodalPointEnv",
        max_episode_steps=100,
    )

from rlox_dp.envs.factory import STATE_KEY, env_spaces, make_env, make_vec_env  # noqa: E402

__all__ = [
    "BIMODAL_ENV_ID",
    "STATE_KEY",
    "BimodalPointEnv",
    "BimodalPointExpert",
    "env_spaces",
    "make_env",
    "make_vec_env",
]
