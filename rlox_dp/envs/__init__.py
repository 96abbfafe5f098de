"""Environments, evaluation, experts and demonstration collection.

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

from rlox_dp.envs.evaluation import (  # noqa: E402  (after registration)
    Episode,
    EvalPolicy,
    EvalResult,
    RolloutResult,
    evaluate_policy,
    rollout,
)
from rlox_dp.envs.experts import (  # noqa: E402
    SB3Expert,
    collect_demonstrations,
    default_cache_dir,
    default_demonstrations,
    expert_env_ids,
    get_expert,
    register_expert,
)
from rlox_dp.envs.factory import STATE_KEY, env_spaces, make_env, make_vec_env  # noqa: E402

__all__ = [
    "BIMODAL_ENV_ID",
    "STATE_KEY",
    "BimodalPointEnv",
    "BimodalPointExpert",
    "Episode",
    "EvalPolicy",
    "EvalResult",
    "RolloutResult",
    "SB3Expert",
    "collect_demonstrations",
    "default_cache_dir",
    "default_demonstrations",
    "env_spaces",
    "evaluate_policy",
    "expert_env_ids",
    "get_expert",
    "make_env",
    "make_vec_env",
    "register_expert",
    "rollout",
]
