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

Videos (``video_dir`` with ``n_videos > 0``): the first ``n_videos`` episodes are rendered with
``render_mode="rgb_array"`` and written as ``episode_<j>_seed_<seed>.mp4`` with OpenCV (a
dependency of gym-pusht). Without OpenCV the frames are saved instead as
``episode_<j>_seed_<seed>.npz`` (key ``frames``, ``(T, H, W, 3)`` uint8) and this is logged once.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from rlox_dp.envs.factory import make_vec_env

__all__ = ["Episode", "EvalPolicy", "EvalResult", "EvaluationInterrupted", "RolloutResult", "evaluate_policy",
           "rollout"]

logger = logging.getLogger(__name__)

SUCCESS_KEYS = ("is_success", "success")
"""Info keys read as per-step success flags, in order of preference."""
PUSHT_SUCCESS_COVERAGE = 0.95
"""Score of a step with ``info["coverage"]``: ``clip(coverage / 0.95, 0, 1)`` (Chi et al. 2023)."""


@runtime_checkable
class EvalPolicy(Protocol):
    """What :func:`evaluate_policy` and :func:`rollout` need from a policy."""

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Clear internal observation/action queues of the envs where ``env_mask`` ``(n_envs,)``
        bool is True (of all envs if None); called before those envs' first action."""

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Map the observation batch ``key -> (n_envs, *obs_shape)`` to actions ``(n_envs, D_act)``."""


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
    """Episodes in the order of the ``seeds`` given to :func:`rollout`, with timing."""

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


def _video_backend() -> str:
    """``"mp4"`` when OpenCV can write videos here, else ``"npz"``."""
    return "mp4" if importlib.util.find_spec("cv2") is not None else "npz"


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float, backend: str) -> Path:
    """Write ``frames`` (each ``(H, W, 3)`` uint8 RGB) to ``path`` + ``.mp4`` or ``.npz``."""
    array = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    if backend == "mp4":
        import cv2

        out = path.with_suffix(".mp4")
        height, width = array.shape[1:3]
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        try:
            for frame in array:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
        finally:
            writer.release()
        return out
    out = path.with_suffix(".npz")
    np.savez_compressed(out, frames=array)
    return out


class _VideoRecorder(gym.Wrapper):
    """Records the episodes whose reset seed is in ``names`` (seed -> file stem) to ``video_dir``."""

    def __init__(self, env: gym.Env, video_dir: str, names: Mapping[int, str], backend: str):
        super().__init__(env)
        self._video_dir = Path(video_dir)
        self._names = dict(names)
        self._backend = backend
        self._fps = float(env.metadata.get("render_fps") or 30)
        self._frames: list[np.ndarray] | None = None
        self._stem: str | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._stem = self._names.get(seed) if seed is not None else None
        self._frames = [self.env.render()] if self._stem is not None else None
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._frames is not None:
            self._frames.append(self.env.render())
            if terminated or truncated:
                write_video(self._video_dir / self._stem, self._frames, self._fps, self._backend)
                self._frames = None
        return obs, reward, terminated, truncated, info


def _info_value(infos: Mapping[str, Any], key: str, i: int) -> Any | None:
    """Value of ``key`` for sub-env ``i`` in a vector env's info dict, None if absent."""
    mask = infos.get(f"_{key}")
    if key not in infos or (mask is not None and not mask[i]):
        return None
    return infos[key][i]


class _RunningEpisode:
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
        backend = _video_backend()
        if backend == "npz":
            logger.warning("OpenCV (cv2) is not installed: saving video frames as .npz files")
        Path(video_dir).mkdir(parents=True, exist_ok=True)
        names = {s: f"episode_{j:03d}_seed_{s}" for j, s in enumerate(seeds[:n_videos])}
        wrapper = partial(_VideoRecorder, video_dir=video_dir, names=names, backend=backend)
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
    running: list[_RunningEpisode | None] = [_RunningEpisode(s, record) for s in seeds[:n_envs]]
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
                running[i] = None if seed is None else _RunningEpisode(seed, record)
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
        raise EvaluationInterrupted(None if stop.result is None else _eval_result(stop.result),
                                    stop.n_requested) from None
    return _eval_result(result)


def _eval_result(result: RolloutResult) -> EvalResult:
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
