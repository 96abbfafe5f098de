"""What a rollout produces: per-episode outcomes, their per-seed arrays and the interrupt result.

An episode's ``success`` is True when any step's info reports it (``"is_success"``, else
``"success"``), None when the env never reports it. Its ``score`` (PushT) is the maximum over steps
of ``clip(info["coverage"] / 0.95, 0, 1)`` (Chi et al. 2023), None without coverage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Episode", "EpisodeTracker", "EvalResult", "EvaluationInterrupted", "RolloutResult", "eval_result"]

SUCCESS_KEYS = ("is_success", "success")
"""Info keys read as per-step success flags, in order of preference."""
PUSHT_SUCCESS_COVERAGE = 0.95
"""Score of a step with ``info["coverage"]``: ``clip(coverage / 0.95, 0, 1)`` (Chi et al. 2023)."""


@dataclass
class Episode:
    """One finished episode.

    Attributes:
        seed: the reset seed.
        episode_return: undiscounted sum of rewards.
        length: number of steps T.
        success: True if any step's info reported success (``"is_success"`` or ``"success"``),
            None if the env never reported it.
        score: max over steps of ``clip(info["coverage"] / 0.95, 0, 1)``, None without coverage.
        observations: when recorded, key -> ``(T, *obs_shape)``, the observation before each action.
        actions: when recorded, ``(T, D_act)`` actions as sent to the env.
        rewards: when recorded, ``(T,)`` float64 rewards.
    """

    seed: int
    episode_return: float
    length: int
    success: bool | None
    score: float | None
    observations: dict[str, np.ndarray] | None = None
    actions: np.ndarray | None = None
    rewards: np.ndarray | None = None


@dataclass
class RolloutResult:
    """Episodes in the order of the ``seeds`` given to :func:`~rlox_dp.evaluation.rollout.rollout`, with timing."""

    episodes: list[Episode]
    wall_time_s: float
    env_steps: int


@dataclass
class EvalResult:
    """Per-episode evaluation results, all arrays of shape ``(E,)`` ordered by seed.

    ``successes`` is None when the env never reported success; when some episodes reported it
    and others did not, the silent ones count as failures. ``scores`` is None unless the env
    reports ``info["coverage"]`` (PushT): then it is the Diffusion Policy paper's score.
    """

    returns: np.ndarray
    lengths: np.ndarray
    successes: np.ndarray | None
    scores: np.ndarray | None
    seeds: np.ndarray
    wall_time_s: float
    env_steps: int

    def summary(self) -> dict[str, float]:
        """Scalar metrics under stable ``"eval/..."`` names."""
        out = {
            "eval/return_mean": float(np.mean(self.returns)),
            "eval/return_std": float(np.std(self.returns)),
            "eval/length_mean": float(np.mean(self.lengths)),
        }
        if self.successes is not None:
            out["eval/success_rate"] = float(np.mean(self.successes))
        if self.scores is not None:
            out["eval/score_mean"] = float(np.mean(self.scores))
        out["eval/n_episodes"] = float(len(self.returns))
        out["eval/env_steps_per_s"] = float(self.env_steps / max(self.wall_time_s, 1e-9))
        out["eval/time_s"] = float(self.wall_time_s)
        return out


class EvaluationInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`rollout` / :func:`evaluate_policy`, carrying what finished before it.

    Attributes:
        result: the finished episodes (a :class:`RolloutResult` from :func:`rollout`, an
            :class:`EvalResult` from :func:`evaluate_policy`), or None when none finished. They
            are the episodes that ended first, so short episodes are over-represented.
        n_requested: episodes that were asked for.
    """

    def __init__(self, result: RolloutResult | EvalResult | None, n_requested: int) -> None:
        super().__init__(f"evaluation interrupted after {self._finished(result)} of {n_requested} episodes")
        self.result = result
        self.n_requested = n_requested

    @staticmethod
    def _finished(result: RolloutResult | EvalResult | None) -> int:
        if result is None:
            return 0
        return len(result.episodes) if isinstance(result, RolloutResult) else len(result.returns)

    @property
    def n_finished(self) -> int:
        """Episodes finished before the interrupt."""
        return self._finished(self.result)

    def summary(self) -> dict[str, float]:
        """``EvalResult.summary()`` of the finished episodes plus ``eval/n_requested``."""
        out = self.result.summary() if isinstance(self.result, EvalResult) else {"eval/n_episodes": 0.0}
        return {**out, "eval/n_requested": float(self.n_requested)}


def _info_value(infos: Mapping[str, Any], key: str, i: int) -> Any | None:
    """Value of ``key`` for sub-env ``i`` in a vector env's info dict, None if absent."""
    mask = infos.get(f"_{key}")
    if key not in infos or (mask is not None and not mask[i]):
        return None
    return infos[key][i]


class EpisodeTracker:
    """Return, length, outcome and (if ``record``) trajectory of the episode of one sub-env."""

    def __init__(self, seed: int, record: bool) -> None:
        self.seed, self.record = seed, record
        self.episode_return, self.length = 0.0, 0
        self.success: bool | None = None
        self.score: float | None = None
        self.obs: dict[str, list[np.ndarray]] = {}
        self.actions: list[np.ndarray] = []
        self.rewards: list[float] = []

    def add(self, obs: Mapping[str, np.ndarray], action: np.ndarray, reward: float,
            infos: Mapping[str, Any], i: int) -> None:
        """Add the step of sub-env ``i``: batched ``obs`` before ``action`` ``(n_envs, D_act)``."""
        self.episode_return += reward
        self.length += 1
        for key in SUCCESS_KEYS:  # success if any step reports it
            value = _info_value(infos, key, i)
            if value is not None:
                self.success = bool(self.success) or bool(value)
                break
        coverage = _info_value(infos, "coverage", i)
        if coverage is not None:  # score: max over steps
            step_score = float(np.clip(float(coverage) / PUSHT_SUCCESS_COVERAGE, 0.0, 1.0))
            self.score = step_score if self.score is None else max(self.score, step_score)
        if self.record:
            for key, value in obs.items():
                self.obs.setdefault(key, []).append(np.array(value[i]))
            self.actions.append(action[i].copy())
            self.rewards.append(reward)

    def finish(self) -> Episode:
        episode = Episode(self.seed, self.episode_return, self.length, self.success, self.score)
        if self.record:
            episode.observations = {k: np.stack(v) for k, v in self.obs.items()}
            episode.actions = np.stack(self.actions)
            episode.rewards = np.asarray(self.rewards, dtype=np.float64)
        return episode


def eval_result(result: RolloutResult) -> EvalResult:
    """Per-episode arrays of a rollout's episodes, in their order."""
    eps = result.episodes
    reported = [e.success for e in eps]
    scores = [e.score for e in eps]
    return EvalResult(
        returns=np.array([e.episode_return for e in eps], dtype=np.float64),
        lengths=np.array([e.length for e in eps], dtype=np.int64),
        successes=None
        if all(s is None for s in reported)
        else np.array([bool(s) for s in reported], dtype=bool),
        scores=None
        if all(s is None for s in scores)
        else np.array([0.0 if s is None else s for s in scores], dtype=np.float64),
        seeds=np.array([e.seed for e in eps], dtype=np.int64),
        wall_time_s=result.wall_time_s,
        env_steps=result.env_steps,
    )
