"""Stable-Baselines3 experts: specs, training to a target return, the on-disk cache.

Trained experts are Stable-Baselines3 zips cached at
``<cache_dir>/experts/<env>-<algo>-<version>-seed<seed>.zip`` (the seed is part of the name so
that different training seeds never share a file) and reused on later calls. Training continues
in chunks until the mean return over :data:`VALIDATION_EPISODES` validation episodes (seeds
from :data:`VALIDATION_SEED`, disjoint from the evaluation seeds 0..999 and the demonstration
seeds from 10,000) reaches the spec's target.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from rlox_dp.envs.factory import STATE_KEY
from rlox_dp.evaluation import evaluate_policy
from rlox_dp.experts.cache import safe_name

__all__ = [
    "SB3_EXPERTS",
    "SB3Expert",
    "SB3ExpertSpec",
    "load_or_train_sb3_expert",
    "sb3_expert_path",
]

logger = logging.getLogger(__name__)

VALIDATION_SEED = 100_000
VALIDATION_EPISODES = 20


class SB3Expert:
    """A Stable-Baselines3 model as an :class:`~rlox_dp.evaluation.EvalPolicy`.

    Acts deterministically on ``obs["state"]`` ``(n_envs, D_obs)`` -> ``(n_envs, D_act)``.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """No-op: the policy is a memoryless MLP."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Deterministic action batch ``(n_envs, D_act)`` for ``obs["state"]`` ``(n_envs, D_obs)``."""
        if STATE_KEY not in obs:
            raise KeyError(f"obs: expected key {STATE_KEY!r}, got keys {sorted(obs)}")
        action, _ = self.model.predict(np.asarray(obs[STATE_KEY]), deterministic=True)
        return np.asarray(action)


@dataclass(frozen=True)
class SB3ExpertSpec:
    """How to train an SB3 expert.

    Attributes:
        env_id: the env trained on (``gym.make(env_id)``, Box observations).
        algo: ``"sac"`` or ``"td3"``.
        version: bump whenever the hyperparameters change (it is part of the cache file name).
        hyperparams: keyword arguments of the SB3 algorithm (besides policy, env, seed).
        total_timesteps: first training budget.
        target_return: mean validation return to reach.
        extra_timesteps: budget of each further chunk while below the target.
        max_timesteps: give up (RuntimeError) past this many steps.
        requires: ``(module, pip requirement)`` pairs the env needs beyond the core dependencies;
            missing modules raise ImportError naming the requirement before any training.
    """

    env_id: str
    algo: Literal["sac", "td3"]
    version: str
    total_timesteps: int
    target_return: float
    extra_timesteps: int
    max_timesteps: int
    hyperparams: Mapping[str, Any] = field(default_factory=dict)
    requires: tuple[tuple[str, str], ...] = ()

    def check_requirements(self) -> None:
        """Raise ImportError naming the pip requirement when a module in ``requires`` is missing."""
        missing = list(dict.fromkeys(
            req for module, req in self.requires if importlib.util.find_spec(module) is None))
        if missing:
            raise ImportError(
                f"the {self.env_id} expert needs {', '.join(missing)}: install it with "
                f"pip install {' '.join(repr(m) for m in missing)} (or pip install \"rlox_dp[mujoco]\")"
            )


SB3_EXPERTS: dict[str, SB3ExpertSpec] = {
    # rl-zoo: hyperparams/sac.yml, Pendulum-v1 (learning_rate 1e-3, other SB3 defaults).
    "Pendulum-v1": SB3ExpertSpec(
        env_id="Pendulum-v1",
        algo="sac",
        version="v1",
        total_timesteps=6_000,
        target_return=-190.0,  # margin over the -200 "solved" level on unseen seeds
        extra_timesteps=2_000,
        max_timesteps=20_000,
        hyperparams={"learning_rate": 1e-3},
    ),
    # rl-zoo: hyperparams/sac.yml, MountainCarContinuous-v0 (gSDE makes exploration work).
    "MountainCarContinuous-v0": SB3ExpertSpec(
        env_id="MountainCarContinuous-v0",
        algo="sac",
        version="v1",
        total_timesteps=25_000,
        target_return=91.0,  # margin over the 90 "solved" level on unseen seeds
        extra_timesteps=5_000,
        max_timesteps=50_000,
        hyperparams={
            "learning_rate": 3e-4,
            "buffer_size": 50_000,
            "batch_size": 512,
            "ent_coef": 0.1,
            "train_freq": 32,
            "gradient_steps": 32,
            "gamma": 0.9999,
            "tau": 0.01,
            "learning_starts": 0,
            "use_sde": True,
            "policy_kwargs": {"log_std_init": -3.67, "net_arch": [64, 64]},
        },
    ),
    # MuJoCo (pip `mujoco` wheels bundle the simulator: no system packages). SB3's SAC defaults
    # with 1,000 random warm-up steps.
    "InvertedDoublePendulum-v5": SB3ExpertSpec(
        env_id="InvertedDoublePendulum-v5",
        algo="sac",
        version="v1",
        total_timesteps=15_000,
        target_return=9_000.0,  # ~96 % of the maximum (9,360): balanced through all 1,000 steps
        extra_timesteps=5_000,
        max_timesteps=50_000,
        hyperparams={"learning_starts": 1_000},
        requires=(("mujoco", "gymnasium[mujoco]"), ("imageio", "gymnasium[mujoco]")),
    ),
}

def sb3_expert_path(spec: SB3ExpertSpec, cache_dir: Path, seed: int) -> Path:
    """``<cache_dir>/experts/<env>-<algo>-<version>-seed<seed>.zip``."""
    name = f"{safe_name(spec.env_id)}-{spec.algo}-{spec.version}-seed{seed}.zip"
    return Path(cache_dir) / "experts" / name


def _algo_class(algo: str) -> type:
    from stable_baselines3 import SAC, TD3

    classes = {"sac": SAC, "td3": TD3}
    if algo not in classes:
        raise ValueError(f"algo: expected one of {sorted(classes)}, got {algo!r}")
    return classes[algo]


def _learn(model: Any, steps: int, progress: bool, first: bool) -> None:
    """``model.learn(steps)`` with a progress bar: SB3's own (needs tqdm and rich) or a tqdm one."""
    if not progress or importlib.util.find_spec("rich") is not None:
        model.learn(steps, reset_num_timesteps=first, progress_bar=progress)
        return
    from stable_baselines3.common.callbacks import BaseCallback
    from tqdm import tqdm

    class TqdmCallback(BaseCallback):
        def _on_training_start(self) -> None:
            self.bar = tqdm(total=steps, desc=f"training expert {model.__class__.__name__}")

        def _on_step(self) -> bool:
            self.bar.update(self.training_env.num_envs)
            return True

        def _on_training_end(self) -> None:
            self.bar.close()

    model.learn(steps, reset_num_timesteps=first, callback=TqdmCallback())


def load_or_train_sb3_expert(
    spec: SB3ExpertSpec, *, cache_dir: str | os.PathLike, progress: bool = True, seed: int = 0
) -> SB3Expert:
    """Load the cached expert of ``spec`` or train, validate and cache it (see module docstring).

    Loading uses SB3's ``load``, which unpickles parts of the zip: acceptable here because the
    file is our own cache, written by this function; never point ``cache_dir`` at untrusted files.
    """
    spec.check_requirements()
    algo_cls = _algo_class(spec.algo)
    path = sb3_expert_path(spec, Path(cache_dir), seed)
    if path.exists():
        return SB3Expert(algo_cls.load(path, device="cpu"))
    start = time.perf_counter()
    model = algo_cls(
        "MlpPolicy", gym.make(spec.env_id), seed=seed, device="cpu", verbose=0, **spec.hyperparams
    )
    trained, expert = 0, SB3Expert(model)
    try:
        while True:
            steps = spec.total_timesteps if trained == 0 else spec.extra_timesteps
            _learn(model, steps, progress, first=trained == 0)
            trained += steps
            result = evaluate_policy(
                expert, spec.env_id, n_episodes=VALIDATION_EPISODES, n_envs=4, seed=VALIDATION_SEED
            )
            mean_return = float(np.mean(result.returns))
            logger.info(
                "%s %s expert: %d steps, %.1f s, validation return %.1f (target %.1f)",
                spec.env_id, spec.algo, trained, time.perf_counter() - start, mean_return,
                spec.target_return,
            )
            if mean_return >= spec.target_return:
                break
            if trained >= spec.max_timesteps:
                raise RuntimeError(
                    f"{spec.algo} expert for {spec.env_id!r} reached a mean validation return of "
                    f"{mean_return:.1f} after {trained} steps, below the target "
                    f"{spec.target_return}"
                )
    finally:
        model.get_env().close()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex}.zip")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return expert
