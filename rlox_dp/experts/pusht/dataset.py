"""PushT expert episodes and datasets: solve an episode by MPC, write the human dataset's layout.

Reproducibility: the planner's samples come from a seeded ``np.random.Generator`` and its
arithmetic gives the same bits in every run, but pymunk itself is not always bitwise
reproducible between processes: with identical inputs, which of the T's two polygons touches
the agent near their joint can depend on memory layout. Episodes are therefore identical
between runs until such a contact, after which they may differ. A recorded episode's float32
actions replay it from its reset seed.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from rlox_dp.buffers.demonstrations import Demonstrations
from rlox_dp.envs.pusht import (
    PUSHT_ENV_ID,
    _core_state,
    _pusht_core,
    block_keypoints,
    load_pusht_demonstrations,
    make_pusht_env,
)
from rlox_dp.experts.cache import default_cache_dir
from rlox_dp.experts.pusht.geometry import block_geometry
from rlox_dp.experts.pusht.model import PushTModel, sim_state
from rlox_dp.experts.pusht.planner import EpisodePlanner, PushTMPCConfig

__all__ = ["default_pusht_demonstrations", "generate_pusht_dataset", "solve_episode"]


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
    return int(value)


def solve_episode(
    seed: int,
    *,
    max_steps: int = 300,
    rng_seed: int | None = None,
    config: PushTMPCConfig | None = None,
    with_images: bool = False,
) -> dict[str, Any]:
    """Solve the PushT episode reset with ``seed`` by MPC on copies of its simulator.

    The planner reads the env's exact physical state every step. Actions are float32, so the
    stored actions replay the episode from ``env.reset(seed=seed)`` (see the module docstring
    on pymunk's reproducibility). Stops at success (coverage > 0.95) or after ``max_steps``
    steps.

    Args:
        seed: the env's reset seed.
        max_steps: step budget.
        rng_seed: seed of the planner's ``np.random.Generator`` (default: ``seed``).
        config: planner settings (default :class:`PushTMPCConfig`).
        with_images: also return the image observation before each action.

    Returns:
        ``states`` ``(L, 5)`` float64 (agent x, y, block x, y, angle in [0, 2 pi), before each
        action), ``actions`` ``(L, 2)`` float32, ``coverage`` ``(L,)`` after each action,
        ``success`` bool, ``wall_time_s`` float and, with images, ``images`` ``(L, 96, 96, 3)``
        uint8 (the adapter's ``"image"`` observation, channels last).
    """
    seed, max_steps = _check_int("seed", seed, 0), _check_int("max_steps", max_steps, 1)
    config = PushTMPCConfig() if config is None else config
    start = time.perf_counter()
    env = make_pusht_env("image" if with_images else "state", max_episode_steps=max_steps)
    obs, _ = env.reset(seed=seed)
    core = _pusht_core(env)
    rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
    planner = EpisodePlanner(
        PushTModel(core),
        block_geometry(core),
        config,
        rng,
        np.array(core.agent.position),
    )
    states, actions, coverage, images, success = [], [], [], [], False
    while len(actions) < max_steps and not success:
        states.append(_core_state(core))
        if with_images:
            images.append(np.moveaxis(obs["image"], 0, -1))
        actions.append(planner.act(sim_state(core)))
        obs, _, _, _, info = env.step(actions[-1])
        coverage.append(float(info["coverage"]))
        success = bool(info["is_success"])
    env.close()
    out = {
        "states": np.array(states),
        "actions": np.array(actions),
        "coverage": np.array(coverage),
        "success": success,
        "wall_time_s": time.perf_counter() - start,
    }
    if with_images:
        out["images"] = np.array(images)
    return out


def generate_pusht_dataset(
    path: str | os.PathLike,
    *,
    n_episodes: int,
    seed: int = 10_000,
    only_successful: bool = True,
    n_workers: int = 1,
    progress: bool = True,
    max_steps: int = 300,
    with_images: bool = False,
    config: PushTMPCConfig | None = None,
) -> Path:
    """Write expert episodes (seeds ``seed .. seed + n_episodes - 1``) as a PushT replay zarr.

    The layout is the human dataset's (``pusht_cchi_v7_replay.zarr``), so
    :func:`~rlox_dp.envs.pusht.load_pusht_demonstrations` reads it alike: float32
    ``data/state`` ``(N, 5)``, ``data/keypoint`` ``(N, 9, 2)`` (:func:`block_keypoints` of the
    state), ``data/action`` ``(N, 2)``, with images ``data/img`` ``(N, 96, 96, 3)`` float32 in
    0..255, and int64 ``meta/episode_ends`` ``(E,)``; plus ``meta/episode_seeds`` ``(E,)`` and
    root attribute ``"metadata"`` (per-attempt seeds, successes, final coverage, lengths and
    times; success rate; planner config). Written atomically (temporary directory + rename).

    Args:
        path: target ``.zarr`` directory (replaced if it exists).
        n_episodes: episodes attempted.
        seed: first reset seed.
        only_successful: drop episodes that did not reach coverage > 0.95 (RuntimeError if none did).
        n_workers: processes (spawn), one episode per task; 1 runs in this process.
        progress: tqdm bar over episodes.
        max_steps, with_images, config: see :func:`solve_episode`.
    """
    from rlox_dp.buffers.loaders import save_demonstrations

    n_episodes, seed = _check_int("n_episodes", n_episodes, 1), _check_int("seed", seed, 0)
    n_workers = _check_int("n_workers", n_workers, 1)
    if Path(path).suffix != ".zarr":
        raise ValueError(f"path: expected a directory name ending in .zarr, got {str(path)!r}")
    config = PushTMPCConfig() if config is None else config
    seeds = list(range(seed, seed + n_episodes))
    solve = partial(solve_episode, max_steps=max_steps, config=config, with_images=with_images)
    pool = (
        ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"))
        if n_workers > 1
        else None
    )
    try:
        results = pool.map(solve, seeds) if pool is not None else map(solve, seeds)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=n_episodes, desc="PushT MPC expert", unit="episode")
        episodes = list(results)
    finally:
        if pool is not None:
            pool.shutdown()
    success = [bool(e["success"]) for e in episodes]
    keep = [i for i, ok in enumerate(success) if ok or not only_successful]
    if not keep:
        raise RuntimeError(
            f"only_successful: none of the {n_episodes} episodes (seeds "
            f"{seeds[0]}..{seeds[-1]}) reached coverage > 0.95 in {max_steps} steps"
        )
    kept = [episodes[i] for i in keep]
    states = np.concatenate([e["states"] for e in kept]).astype(np.float32)
    obs = {
        "state": states,
        "keypoint": block_keypoints(states[:, 2:5].astype(np.float64)).astype(np.float32),
    }
    if with_images:
        obs["img"] = np.concatenate([e["images"] for e in kept]).astype(np.float32)
    metadata = {
        "source": "pusht_mpc_expert",
        "env_id": PUSHT_ENV_ID,
        "config": dataclasses.asdict(config),
        "max_steps": max_steps,
        "seeds": seeds,
        "success": success,
        "success_rate": float(np.mean(success)),
        "final_coverage": [float(e["coverage"][-1]) for e in episodes],
        "max_coverage": [float(e["coverage"].max()) for e in episodes],
        "lengths": [len(e["actions"]) for e in episodes],
        "wall_time_s": [float(e["wall_time_s"]) for e in episodes],
        "n_attempted": n_episodes,
        "dropped_seeds": [seeds[i] for i in range(n_episodes) if i not in keep],
    }
    demos = Demonstrations(
        observations=obs,
        actions=np.concatenate([e["actions"] for e in kept]),
        episode_ends=np.cumsum([len(e["actions"]) for e in kept]).astype(np.int64),
        episode_seeds=np.array([seeds[i] for i in keep], dtype=np.int64),
        metadata=metadata,
    )
    return save_demonstrations(demos, path, overwrite=True, channels_last_keys=["img"])


def default_pusht_demonstrations(
    obs_mode: str = "keypoints",
    *,
    n_episodes: int = 100,
    seed: int = 10_000,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> Demonstrations:
    """MPC-expert PushT demonstrations, generated on first use and cached.

    The store is ``<cache_dir>/demos/pusht-mpc-<n_episodes>-<seed>.zarr`` (successful episodes
    only, see :func:`generate_pusht_dataset`); ``obs_mode="image"`` regenerates it with images
    when the cached store has none. Loaded with
    :func:`~rlox_dp.envs.pusht.load_pusht_demonstrations` (``cache_dir`` defaults to
    :func:`~rlox_dp.experts.cache.default_cache_dir`).
    """
    import zarr

    if obs_mode not in ("state", "keypoints", "image"):
        raise ValueError(f"obs_mode: expected 'state', 'keypoints' or 'image', got {obs_mode!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "demos" / f"pusht-mpc-{int(n_episodes)}-{int(seed)}.zarr"
    images = obs_mode == "image"
    if not path.exists() or (images and "img" not in zarr.open_group(str(path), mode="r")["data"]):
        generate_pusht_dataset(
            path, n_episodes=n_episodes, seed=seed, progress=progress, with_images=images
        )
    return load_pusht_demonstrations(path, obs_mode)
