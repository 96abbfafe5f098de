"""Demonstrations from experts: rollouts of any policy, and cached default demonstrations.

Demonstrations from :func:`default_demonstrations` are cached at
``<cache_dir>/demos/<env>-<version>[-noise<std>]-<n_episodes>-<seed>.npz``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rlox_dp.buffers.demonstrations import Demonstrations
from rlox_dp.buffers.episodes import demonstrations_from_episodes
from rlox_dp.buffers.loaders import load_demonstrations, save_demonstrations
from rlox_dp.evaluation import EvalPolicy, rollout
from rlox_dp.experts.cache import default_cache_dir, safe_name
from rlox_dp.experts.registry import get_expert

__all__ = ["DEMOS_VERSION", "DEMO_ACTION_NOISE", "collect_demonstrations", "default_demonstrations"]


def collect_demonstrations(
    env_id: str,
    policy: EvalPolicy,
    *,
    n_episodes: int,
    seed: int = 0,
    n_envs: int = 4,
    only_successful: bool = False,
    env_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
    action_noise: float = 0.0,
) -> Demonstrations:
    """Roll out ``policy`` for episodes with seeds ``seed .. seed + n_episodes - 1``.

    Args:
        env_id, env_kwargs: the env (see :func:`~rlox_dp.envs.factory.make_env`).
        policy: the demonstrator; see :class:`~rlox_dp.evaluation.EvalPolicy`.
        n_episodes: episodes to run.
        seed: first reset seed.
        n_envs: parallel envs (a stochastic policy, such as the bimodal expert, draws its random
            numbers in env order, so its demos depend on ``n_envs`` as well as ``seed``).
        only_successful: keep only the episodes whose env reported success; raises if the env
            never reports success or no episode succeeded.
        progress: tqdm bar over episodes.
        action_noise: noise injection (DART): the env executes the policy's action plus Gaussian
            noise of this std (fraction of the half action range), the clean action is recorded;
            see :func:`~rlox_dp.evaluation.rollout`. Demonstrations of a deterministic expert
            otherwise cover only its own narrow state distribution, and a cloned policy that drifts
            off it never saw how to come back (InvertedDoublePendulum-v5 needs this).

    Returns:
        :class:`Demonstrations` with observations ``key -> (N, ...)``, actions ``(N, D_act)``,
        rewards ``(N,)`` float32, ``episode_seeds`` ``(E,)`` and metadata ``env_id``,
        ``episode_returns``, ``return_mean``, ``success_rate`` (None without success reports),
        ``n_attempted`` and ``dropped_seeds``.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes: expected a positive int, got {n_episodes}")
    seeds = [int(seed) + j for j in range(int(n_episodes))]
    result = rollout(
        policy, env_id, seeds, n_envs=n_envs, env_kwargs=env_kwargs, record=True,
        progress=progress, progress_desc=f"demos {env_id}", action_noise=action_noise,
        noise_seed=int(seed),
    )
    episodes = result.episodes
    successes = [e.success for e in episodes]
    reported = any(s is not None for s in successes)
    if only_successful:
        if not reported:
            raise ValueError(
                f"only_successful: {env_id!r} never reported success (info['is_success'] or "
                "info['success']), so episodes cannot be filtered"
            )
        episodes = [e for e in episodes if e.success]
        if not episodes:
            raise RuntimeError(
                f"only_successful: none of the {n_episodes} episodes on {env_id!r} "
                f"(seeds {seeds[0]}..{seeds[-1]}) succeeded"
            )
    demos = demonstrations_from_episodes(
        [
            {"obs": e.observations, "action": e.actions, "reward": e.rewards.astype(np.float32),
             "seed": e.seed}
            for e in episodes
        ]
    )
    kept = {e.seed for e in episodes}
    returns = [e.episode_return for e in episodes]
    demos.metadata = {
        "source": "rollout",
        "env_id": env_id,
        "env_kwargs": dict(env_kwargs or {}),
        "episode_returns": returns,
        "return_mean": float(np.mean(returns)),
        "success_rate": float(np.mean([bool(s) for s in successes])) if reported else None,
        "n_attempted": int(n_episodes),
        "dropped_seeds": [s for s in seeds if s not in kept],
        "action_noise": float(action_noise),
    }
    return demos


#: part of cached demo file names: bump when an env or expert changes so stale demos are not reused.
DEMOS_VERSION = "v2"

#: noise injection (std as a fraction of the half action range) of :func:`default_demonstrations`
#: per env; see ``collect_demonstrations(action_noise=...)``. A deterministic expert's clean
#: demonstrations of InvertedDoublePendulum-v5 never show a recovery, and policies cloned from
#: them fall; with this noise the expert still balances and so do the clones.
DEMO_ACTION_NOISE: dict[str, float] = {"InvertedDoublePendulum-v5": 0.1}


def default_demonstrations(
    env_id: str,
    *,
    n_episodes: int = 50,
    seed: int = 10_000,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Demonstrations:
    """Expert demonstrations for ``env_id``: loaded from the cache or collected and cached.

    The expert is :func:`get_expert` with seed 0; episodes use reset seeds
    ``seed .. seed + n_episodes - 1`` (default from 10,000: disjoint from evaluation seeds).
    ``metadata["expert_return_mean"]`` is the mean return of the collected episodes (with the
    env's :data:`DEMO_ACTION_NOISE`, if any, injected).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    noise = DEMO_ACTION_NOISE.get(env_id, 0.0)
    noise_tag = f"-noise{noise:g}" if noise > 0 else ""
    path = (cache / "demos"
            / f"{safe_name(env_id)}-{DEMOS_VERSION}{noise_tag}-{int(n_episodes)}-{int(seed)}.npz")
    if path.exists():
        return load_demonstrations(path)
    expert = get_expert(env_id, cache_dir=cache, progress=progress, seed=0)
    demos = collect_demonstrations(
        env_id, expert, n_episodes=n_episodes, seed=seed, progress=progress, action_noise=noise
    )
    demos.metadata["source"] = "expert"
    demos.metadata["expert_return_mean"] = demos.metadata["return_mean"]
    save_demonstrations(demos, path, overwrite=True)
    return demos
