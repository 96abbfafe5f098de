"""Policy evaluation and rollouts in vectorized envs: seeded episodes, success and score, videos."""

from __future__ import annotations

from rlox_dp.evaluation.results import Episode, EvalResult, EvaluationInterrupted, RolloutResult
from rlox_dp.evaluation.rollout import EvalPolicy, evaluate_policy, rollout

__all__ = [
    "Episode",
    "EvalPolicy",
    "EvalResult",
    "EvaluationInterrupted",
    "RolloutResult",
    "evaluate_policy",
    "rollout",
]
