"""A run's evaluation (:meth:`rlox_dp.Trainer.evaluate`): its policy in vectorized envs, under the
training config's protocol (episodes, envs, seed), leaving the policy as it found it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from rlox_dp.run_directory import check_writable_dir
from rlox_dp.threads import restore_threads
from rlox_dp.training.config import TrainingConfig
from rlox_dp.training.setup import check_count

if TYPE_CHECKING:
    from rlox_dp.algorithms import Algorithm
    from rlox_dp.evaluation import EvalResult

__all__ = ["evaluate_run_policy"]


def evaluate_run_policy(
    policy: Algorithm, env_id: str, env_kwargs: Mapping[str, Any], training: TrainingConfig, *,
    n_episodes: int | None, n_envs: int | None, seed: int | None, video_dir: str | os.PathLike | None,
    n_videos: int, progress: bool, configure_threads: Callable[[int, str], int],
) -> EvalResult:
    """Evaluate ``policy`` on ``n_episodes`` episodes of ``env_id`` with seeds ``seed, seed+1, ...``
    (:func:`rlox_dp.evaluation.evaluate_policy`).

    ``n_episodes``, ``n_envs``, ``seed``: ``None`` takes ``training``'s ``n_eval_episodes``,
    ``n_eval_envs``, ``eval_seed``. The policy runs in eval mode with fresh observation histories;
    its train/eval mode is restored afterwards, as are the torch threads, which
    ``configure_threads(n_envs, "evaluation")`` chose (returning the count before).

    Raises:
        ValueError: a count that is not an int (``n_episodes``, ``n_envs`` >= 1; ``seed``,
            ``n_videos`` >= 0), or a ``video_dir`` that cannot be written.
        rlox_dp.evaluation.EvaluationInterrupted: Ctrl-C; its ``summary()`` covers the episodes
            finished before it.
    """
    from rlox_dp.evaluation import evaluate_policy

    n_episodes = check_count("n_episodes", training.n_eval_episodes if n_episodes is None else n_episodes, 1)
    n_envs = check_count("n_envs", training.n_eval_envs if n_envs is None else n_envs, 1)
    seed = check_count("seed", training.eval_seed if seed is None else seed, 0)
    n_videos = check_count("n_videos", n_videos, 0)
    if video_dir is not None and n_videos > 0:
        check_writable_dir("video_dir", video_dir)
    was_training = policy.training
    policy.eval()
    policy.reset()
    threads_before = configure_threads(n_envs, "evaluation")
    try:
        return evaluate_policy(
            policy, env_id, n_episodes=n_episodes, n_envs=n_envs, seed=seed,
            env_kwargs=env_kwargs, video_dir=None if video_dir is None else str(video_dir),
            n_videos=n_videos, progress=progress,
        )
    finally:
        policy.reset()
        policy.train(was_training)
        restore_threads(threads_before)
