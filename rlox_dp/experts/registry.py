"""The expert registry: env id -> ``factory(cache_dir, progress, seed) -> EvalPolicy``.

Built in:

* ``Pendulum-v1``, ``MountainCarContinuous-v0``, ``InvertedDoublePendulum-v5`` (MuJoCo;
  ``pip install "rlox_dp[mujoco]"``): SAC experts trained on first use and cached
  (:mod:`rlox_dp.experts.sb3`).
* ``rlox_dp/BimodalPoint-v0``: the scripted two-mode :class:`~rlox_dp.experts.bimodal.BimodalPointExpert`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from rlox_dp.envs.bimodal import BIMODAL_ENV_ID
from rlox_dp.evaluation import EvalPolicy
from rlox_dp.experts.bimodal import BimodalPointExpert
from rlox_dp.experts.cache import default_cache_dir
from rlox_dp.experts.sb3 import SB3_EXPERTS, SB3ExpertSpec, load_or_train_sb3_expert
from rlox_dp.registry import Registry, suggest

__all__ = ["EXPERTS", "ExpertFactory", "expert_env_ids", "get_expert", "register_expert"]

ExpertFactory = Callable[[Path, bool, int], EvalPolicy]
"""``(cache_dir, progress, seed) -> policy``."""

#: env id -> expert factory (lookup ignores case; see :class:`~rlox_dp.registry.Registry`).
EXPERTS: Registry[ExpertFactory] = Registry("expert")


def register_expert(env_id: str) -> Callable[[ExpertFactory], ExpertFactory]:
    """Decorator registering ``factory(cache_dir, progress, seed) -> EvalPolicy`` for ``env_id``.

    Raises:
        DuplicateNameError: ``env_id`` (in any case) already has another expert.
    """
    return EXPERTS.register(env_id)


def expert_env_ids() -> list[str]:
    """Env ids that have a registered expert, sorted."""
    return sorted(EXPERTS.names())


def get_expert(
    env_id: str, *, cache_dir: str | os.PathLike | None = None, progress: bool = True, seed: int = 0
) -> EvalPolicy:
    """Return the expert for ``env_id`` (training and caching it first if needed).

    Args:
        env_id: an id from :func:`expert_env_ids`.
        cache_dir: where trained experts live (default :func:`default_cache_dir`).
        progress: show a progress bar while training.
        seed: training seed (SB3 experts) or mode-draw seed (scripted experts).
    """
    factory = EXPERTS.find(env_id)
    if factory is None:
        close = suggest(env_id, EXPERTS.names()) if isinstance(env_id, str) else None
        hint = f" Did you mean {close!r}?" if close is not None else ""
        raise ValueError(
            f"env: no expert is available for {env_id!r}.{hint} Experts exist for "
            f"{expert_env_ids()}. For other envs pass your own demonstrations (demos=PATH)."
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return factory(cache, progress, int(seed))


def _sb3_factory(spec: SB3ExpertSpec, cache_dir: Path, progress: bool, seed: int) -> EvalPolicy:
    return load_or_train_sb3_expert(spec, cache_dir=cache_dir, progress=progress, seed=seed)


for _env_id, _spec in SB3_EXPERTS.items():
    register_expert(_env_id)(partial(_sb3_factory, _spec))


@register_expert(BIMODAL_ENV_ID)
def _bimodal_expert(cache_dir: Path, progress: bool, seed: int) -> EvalPolicy:
    return BimodalPointExpert(np.random.default_rng(seed))
