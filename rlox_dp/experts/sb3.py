"""Expert policies and demonstration collection.

Experts come from a registry keyed by env id (:func:`register_expert`). Built in:

* ``Pendulum-v1``: SAC (rl-zoo hyperparameters), trained on first use.
* ``MountainCarContinuous-v0``: SAC with gSDE exploration (rl-zoo hyperparameters), trained on
  first use.
* ``InvertedDoublePendulum-v5`` (MuJoCo; ``pip install "rlox_dp[mujoco]"``, no system packages):
  SAC, trained on first use (about 15k steps, 4 minutes on one CPU core).
* ``rlox_dp/BimodalPoint-v0``: the scripted two-mode :class:`~rlox_dp.envs.bimodal.BimodalPointExpert`.

Trained experts are Stable-Baselines3 zips cached at
``<cache_dir>/experts/<env>-<algo>-<version>-seed<seed>.zip`` (the seed is part of the name so
that different training seeds never share a file) and reused on later calls. Training continues
in chunks until the mean return over :data:`VALIDATION_EPISODES` validation episodes (seeds
from :data:`VALIDATION_SEED`, disjoint from the evaluation seeds 0..999 and the demonstration
seeds from 10,000) reaches the spec's target.

Demonstrations from :func:`default_demonstrations` are cached at
``<cache_dir>/demos/<env>-<n_episodes>-<seed>.npz``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from rlox_dp.buffers.demonstrations import Demonstrations
from rlox_dp.buffers.loaders import (
    demonstrations_from_episodes,
    load_demonstrations,
    save_demonstrations,
)
from rlox_dp.envs.bimodal import BIMODAL_ENV_ID, BimodalPointExpert
from rlox_dp.envs.evaluation import EvalPolicy, evaluate_policy, rollout
from rlox_dp.envs.factory import STATE_KEY

__all__ = [
    "SB3_EXPERTS",
    "SB3Expert",
    "SB3ExpertSpec",
    "collect_demonstrations",
    "default_cache_dir",
    "default_demonstrations",
    "expert_env_ids",
    "get_expert",
    "load_or_train_sb3_expert",
    "register_expert",
]

logger = logging.getLogger(__name__)

ExpertFactory = Callable[[Path, bool, int], EvalPolicy]
"""``(cache_dir, progress, seed) -> policy``."""

VALIDATION_SEED = 100_000
VALIDATION_EPISODES = 20

_EXPERTS: dict[str, ExpertFactory] = {}


def register_expert(env_id: str) -> Callable[[ExpertFactory], ExpertFactory]:
    """Decorator registering ``factory(cache_dir, progress, seed) -> EvalPolicy`` for ``env_id``."""

    def decorator(factory: ExpertFactory) -> ExpertFactory:
        if env_id in _EXPERTS:
            raise ValueError(f"env_id: an expert is already registered for {env_id!r}")
        _EXPERTS[env_id] = factory
        return factory

    return decorator


def expert_env_ids() -> list[str]:
    """Env ids that have a registered expert, sorted."""
    return sorted(_EXPERTS)


def default_cache_dir() -> Path:
    """``$RLOX_DP_CACHE`` if set, else ``$XDG_CACHE_HOME/rlox_dp`` (default ``~/.cache/rlox_dp``)."""
    if os.environ.get("RLOX_DP_CACHE"):
        return Path(os.environ["RLOX_DP_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "rlox_dp"


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
    if env_id not in _EXPERTS:
        raise ValueError(
            f"env: no expert is available for {env_id!r}; experts exist for {expert_env_ids()}. "
            "For other envs pass your own demonstrations (demos=PATH)."
        )
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return _EXPERTS[env_id](cache, progress, int(seed))


class SB3Expert:
    """A Stable-Baselines3 model as an :class:`~rlox_dp.envs.evaluation.EvalPolicy`.

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
        total_timesteps=6_000,  # measured: validation return -178 after 6k steps (seed 0)
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
        total_timesteps=25_000,  # measured: validation return 92.5 after 25k steps (seed 0)
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
    # with 1,000 random warm-up steps; measured (seed 0): validation return 1,764 after 10k steps,
    # 9,359.8 (the maximum, every episode balanced for 1,000 steps) after 15k.
    "InvertedDoublePendulum-v5": SB3ExpertSpec(
        env_id="InvertedDoublePendulum-v5",
        algo="sac",
        version="v1",
        total_timesteps=15_000,
        target_return=9_000.0,  # ~96 % of the maximum: balanced through all 1,000 steps
        extra_timesteps=5_000,
        max_timesteps=50_000,
        hyperparams={"learning_starts": 1_000},
        requires=(("mujoco", "gymnasium[mujoco]"), ("imageio", "gymnasium[mujoco]")),
    ),
}


def _safe_name(env_id: str) -> str:
    return env_id.replace("/", "_").replace(":", "_")


def sb3_expert_path(spec: SB3ExpertSpec, cache_dir: Path, seed: int) -> Path:
    """``<cache_dir>/experts/<env>-<algo>-<version>-seed<seed>.zip``."""
    name = f"{_safe_name(spec.env_id)}-{spec.algo}-{spec.version}-seed{seed}.zip"
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


def _sb3_factory(spec: SB3ExpertSpec, cache_dir: Path, progress: bool, seed: int) -> EvalPolicy:
    return load_or_train_sb3_expert(spec, cache_dir=cache_dir, progress=progress, seed=seed)


for _env_id, _spec in SB3_EXPERTS.items():
    register_expert(_env_id)(partial(_sb3_factory, _spec))


@register_expert(BIMODAL_ENV_ID)
def _bimodal_expert(cache_dir: Path, progress: bool, seed: int) -> EvalPolicy:
    return BimodalPointExpert(np.random.default_rng(seed))


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
        policy: the demonstrator; see :class:`~rlox_dp.envs.evaluation.EvalPolicy`.
        n_episodes: episodes to run.
        seed: first reset seed.
        n_envs: parallel envs (a stochastic policy, such as the bimodal expert, draws its random
            numbers in env order, so its demos depend on ``n_envs`` as well as ``seed``).
        only_successful: keep only the episodes whose env reported success; raises if the env
            never reports success or no episode succeeded.
        progress: tqdm bar over episodes.
        action_noise: noise injection (DART): the env executes the policy's action plus Gaussian
            noise of this std (fraction of the half action range), the clean action is recorded;
            see :func:`~rlox_dp.envs.evaluation.rollout`. Demonstrations of a deterministic expert
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
#: per env; see ``collect_demonstrations(action_noise=...)``. Measured on
#: InvertedDoublePendulum-v5 (50 demos, 10 eval episodes): with clean demos BC falls after 135 steps
#: (return 1,255) and Diffusion Policy after ~40; with 0.1 the expert still scores 9,177 and BC
#: balances all 1,000 steps (9,360); 0.3 and 0.5 make the expert itself fall.
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
            / f"{_safe_name(env_id)}-{DEMOS_VERSION}{noise_tag}-{int(n_episodes)}-{int(seed)}.npz")
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
