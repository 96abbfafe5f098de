"""Run policies in vectorized envs: one rollout loop for evaluation and demonstration collection.

Seeding contract: :func:`rollout` runs exactly one episode per entry of ``seeds`` and resets the
env of episode ``j`` with ``seeds[j]``, whichever sub-env runs it. With a deterministic policy the
results therefore do not depend on ``n_envs``. Episodes are scheduled on the vector env with
autoreset disabled: when a sub-env's episode ends it is reset (``options={"reset_mask": ...}``)
with the next seed, and the policy is told via ``policy.reset(env_mask)`` (``env_mask`` marks
every sub-env that was just reset) before it is asked for that env's next action. Once every
seed has been handed out, finished sub-envs keep running filler episodes (reset without a seed,
also announced through ``policy.reset``) whose steps are neither counted nor recorded, until the
last real episode ends; ``policy.reset(None)`` is called once at the start.

Videos (``video_dir`` with ``n_videos > 0``, :mod:`rlox_dp.evaluation.video`): the first
``n_videos`` episodes are written as ``episode_<j>_seed_<seed>.mp4`` (``.npz`` frames without
OpenCV, logged once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from rlox_dp.envs.factory import make_vec_env
from rlox_dp.evaluation.results import (
    Episode,
    EpisodeTracker,
    EvalResult,
    EvaluationInterrupted,
    RolloutResult,
    eval_result,
)
from rlox_dp.evaluation.video import VideoRecorder, video_backend

__all__ = ["EvalPolicy", "evaluate_policy", "rollout"]

logger = logging.getLogger(__name__)


@runtime_checkable
class EvalPolicy(Protocol):
    """What :func:`evaluate_policy` and :func:`rollout` need from a policy."""

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Clear internal observation/action queues of the envs where ``env_mask`` ``(n_envs,)``
        bool is True (of all envs if None); called before those envs' first action."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Map the observation batch ``key -> (n_envs, *obs_shape)`` to actions ``(n_envs, D_act)``."""


def rollout(
    policy: EvalPolicy,
    env_id: str,
    seeds: Sequence[int],
    *,
    n_envs: int = 8,
    env_kwargs: Mapping[str, Any] | None = None,
    max_episode_steps: int | None = None,
    record: bool = False,
    video_dir: str | None = None,
    n_videos: int = 0,
    asynchronous: bool = False,
    progress: bool = False,
    progress_desc: str = "rollout",
    action_noise: float = 0.0,
    noise_seed: int = 0,
) -> RolloutResult:
    """Run one episode per seed with ``policy`` on ``min(n_envs, len(seeds))`` parallel envs.

    Args:
        policy: see :class:`EvalPolicy`; gets observation batches ``key -> (n_envs, ...)`` and
            returns ``(n_envs, D_act)`` actions, which are sent to the env unchanged (no clipping).
        env_id: see :func:`rlox_dp.envs.factory.make_env`.
        seeds: distinct reset seeds, one episode each.
        n_envs: number of parallel sub-envs.
        env_kwargs, max_episode_steps: passed to :func:`~rlox_dp.envs.factory.make_env`.
        record: keep each episode's observations, actions and rewards.
        video_dir, n_videos: write videos of the episodes of ``seeds[:n_videos]`` (module docstring).
        asynchronous: one subprocess per env.
        progress: show a tqdm bar over episodes.
        action_noise: for demonstration collection with noise injection (DART, Laskey et al.
            2017): the env executes ``policy action + N(0, (action_noise * half range)^2)``,
            clipped to the action space bounds, while the *policy's* action is recorded, so that
            the demonstrations show how the expert recovers from perturbed states. 0 = off.
        noise_seed: seed of that noise (a generator of its own: the noise never touches the
            policy's randomness).

    Returns:
        :class:`RolloutResult` with episodes in the order of ``seeds``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds: expected at least one seed, got an empty sequence")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: expected distinct seeds, got duplicates in {seeds}")
    if n_envs < 1:
        raise ValueError(f"n_envs: expected a positive int, got {n_envs}")
    if n_videos < 0 or (n_videos > 0 and video_dir is None):
        raise ValueError(f"n_videos: expected 0, or > 0 together with video_dir; got {n_videos}")
    if not action_noise >= 0:
        raise ValueError(f"action_noise: expected a float >= 0, got {action_noise}")
    n_envs = min(int(n_envs), len(seeds))

    wrapper = None
    if n_videos > 0:
        backend = video_backend()
        if backend == "npz":
            logger.warning("OpenCV (cv2) is not installed: saving video frames as .npz files")
        Path(video_dir).mkdir(parents=True, exist_ok=True)
        names = {s: f"episode_{j:03d}_seed_{s}" for j, s in enumerate(seeds[:n_videos])}
        wrapper = partial(VideoRecorder, video_dir=video_dir, names=names, backend=backend)
    envs = make_vec_env(
        env_id,
        n_envs,
        asynchronous=asynchronous,
        env_kwargs=env_kwargs,
        render_mode="rgb_array" if n_videos > 0 else None,
        max_episode_steps=max_episode_steps,
        autoreset_mode=AutoresetMode.DISABLED,
        wrapper=wrapper,
    )
    action_shape = (n_envs, *envs.single_action_space.shape)
    noise_rng = np.random.default_rng(noise_seed)
    if action_noise > 0:
        space = envs.single_action_space
        if not (isinstance(space, gym.spaces.Box) and space.is_bounded()):
            envs.close()
            raise ValueError(f"action_noise: needs a bounded Box action space, got {space}")
        half_range = (space.high - space.low) / 2.0
    pending = iter(seeds[n_envs:])
    # the episode each sub-env is running; None while it runs an uncounted filler episode
    running: list[EpisodeTracker | None] = [EpisodeTracker(s, record) for s in seeds[:n_envs]]
    finished: dict[int, Episode] = {}
    env_steps = 0
    pbar = None
    if progress:
        from tqdm import tqdm

        pbar = tqdm(total=len(seeds), desc=progress_desc, unit="episode")
    start = time.perf_counter()
    try:
        obs, _ = envs.reset(seed=seeds[:n_envs])
        policy.reset(None)
        while len(finished) < len(seeds):
            obs = dict(obs)
            action = np.asarray(policy.select_action(obs))
            if action.shape != action_shape:
                raise ValueError(f"policy.select_action: expected actions of shape "
                                 f"{action_shape}, got {action.shape}")
            if not np.all(np.isfinite(action)):
                raise ValueError("policy.select_action: returned non-finite actions")
            action = action.astype(envs.single_action_space.dtype, copy=False)
            executed = action
            if action_noise > 0:
                noise = noise_rng.normal(0.0, action_noise, action.shape) * half_range
                executed = np.clip(action + noise, envs.single_action_space.low,
                                   envs.single_action_space.high).astype(action.dtype)
            next_obs, reward, terminated, truncated, infos = envs.step(executed)
            done = terminated | truncated
            for i, episode in enumerate(running):
                if episode is None:
                    continue
                env_steps += 1
                episode.add(obs, action, float(reward[i]), infos, i)
                if done[i]:
                    finished[episode.seed] = episode.finish()
                    if pbar is not None:
                        pbar.update(1)
            if len(finished) == len(seeds) or not done.any():
                obs = next_obs
                continue
            reset_seeds: list[int | None] = [None] * n_envs
            for i in np.flatnonzero(done):
                seed = reset_seeds[i] = next(pending, None)
                running[i] = None if seed is None else EpisodeTracker(seed, record)
            obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": done.copy()})
            policy.reset(done.copy())
    except KeyboardInterrupt:
        partial_result = RolloutResult([finished[s] for s in seeds if s in finished],
                                        time.perf_counter() - start, env_steps)
        raise EvaluationInterrupted(partial_result if finished else None, len(seeds)) from None
    finally:
        envs.close()
        if pbar is not None:
            pbar.close()
    return RolloutResult(
        episodes=[finished[s] for s in seeds],
        wall_time_s=time.perf_counter() - start,
        env_steps=env_steps,
    )


def evaluate_policy(
    policy: EvalPolicy,
    env_id: str,
    *,
    n_episodes: int,
    n_envs: int = 8,
    seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
    max_episode_steps: int | None = None,
    video_dir: str | None = None,
    n_videos: int = 0,
    asynchronous: bool = False,
    progress: bool = False,
) -> EvalResult:
    """Evaluate ``policy`` on exactly ``n_episodes`` episodes; episode j is reset with ``seed + j``.

    Results do not depend on ``n_envs`` for a deterministic policy (see the module docstring).
    Arguments are those of :func:`rollout`; returns an :class:`EvalResult`.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes: expected a positive int, got {n_episodes}")
    seeds = [int(seed) + j for j in range(int(n_episodes))]
    try:
        result = rollout(
            policy,
            env_id,
            seeds,
            n_envs=n_envs,
            env_kwargs=env_kwargs,
            max_episode_steps=max_episode_steps,
            video_dir=video_dir,
            n_videos=n_videos,
            asynchronous=asynchronous,
            progress=progress,
            progress_desc=f"eval {env_id}",
        )
    except EvaluationInterrupted as stop:  # the same, with per-episode arrays
        raise EvaluationInterrupted(None if stop.result is None else eval_result(stop.result),
                                    stop.n_requested) from None
    return eval_result(result)
