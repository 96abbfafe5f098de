"""``Algorithm.predict`` (Stable-Baselines3's signature): SB3's own ``evaluate_policy`` runs our
policies and gets the returns of our evaluation on the same seeds; single / batched / Box / Dict
observations; ``episode_start``; ``deterministic``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import TINY, pendulum_demos
from stable_baselines3.common.evaluation import evaluate_policy as sb3_evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv

from rlox_dp import Trainer
from rlox_dp.buffers import Demonstrations
from rlox_dp.envs import make_env
from rlox_dp.envs.pusht import PUSHT_ENV_ID, pusht_observations
from rlox_dp.evaluation import evaluate_policy, rollout


def _pendulum_policy(tmp_path):
    config = {**TINY["diffusion"], "denoiser": "mlp", "hidden_dim": 32, "n_layers": 2}
    trainer = Trainer("diffusion", env="Pendulum-v1", demos=pendulum_demos(), config=config,
                      device="cpu", log_dir=tmp_path / "run", progress=False, preset=False)
    trainer.train(20, evaluate=False)
    return trainer.eval_policy


def _pusht_keypoint_demos(n_episodes: int = 3, length: int = 30) -> Demonstrations:
    """Keypoint observations of random PushT states, actions that walk the agent around."""
    rng = np.random.default_rng(0)
    state = np.column_stack([rng.uniform(100, 400, (n_episodes * length, 4)),
                             rng.uniform(0, 2 * np.pi, n_episodes * length)])
    actions = (state[:, :2] + rng.normal(0, 20, (len(state), 2))).clip(0, 512).astype(np.float32)
    return Demonstrations(observations=pusht_observations({"state": state}, "keypoints"),
                          actions=actions,
                          episode_ends=np.arange(1, n_episodes + 1, dtype=np.int64) * length)


def _pusht_policy(tmp_path):
    config = {**TINY["diffusion"], "obs": "keypoints"}
    trainer = Trainer("diffusion", env=PUSHT_ENV_ID, demos=_pusht_keypoint_demos(), config=config,
                      device="cpu", log_dir=tmp_path / "run", progress=False, preset=False)
    trainer.train(10, evaluate=False)
    return trainer.eval_policy


@pytest.mark.parametrize("case", ["pendulum", "pusht_keypoints"])
def test_sb3_evaluate_policy_equals_our_evaluation(case, tmp_path):
    """SB3's evaluate_policy drives ``predict`` (Box obs for Pendulum, Dict obs for PushT); with
    one episode per env, seeded ``seed + i`` by ``VecEnv.seed``, every episode's return equals
    our evaluation's for the same seed (up to SB3's float32 reward buffer), and so does every
    action taken."""
    n, seed, steps = 3, 7, 60
    if case == "pendulum":
        policy, env_id, env_kwargs = _pendulum_policy(tmp_path), "Pendulum-v1", {}
        make_one = lambda: gym.make("Pendulum-v1", max_episode_steps=steps)  # noqa: E731 - Box obs
    else:
        policy, env_id, env_kwargs = _pusht_policy(tmp_path), PUSHT_ENV_ID, {"obs_mode": "keypoints"}
        make_one = lambda: make_env(PUSHT_ENV_ID, env_kwargs=env_kwargs,  # noqa: E731 - Dict obs
                                    max_episode_steps=steps)
    vec_env = DummyVecEnv([make_one] * n)
    vec_env.seed(seed)
    sb3_actions: list[list[np.ndarray]] = [[] for _ in range(n)]

    def record(local_vars, _globals):  # called for each env still running a counted episode
        sb3_actions[local_vars["i"]].append(local_vars["actions"][local_vars["i"]].copy())

    sb3_returns, sb3_lengths = sb3_evaluate_policy(
        policy, vec_env, n_eval_episodes=n, deterministic=True, return_episode_rewards=True,
        callback=record, warn=False,
    )
    vec_env.close()
    policy.fixed_noise = True  # our evaluation with the noise predict(deterministic=True) uses
    try:
        ours = evaluate_policy(policy, env_id, n_episodes=n, n_envs=n, seed=seed,
                               env_kwargs=env_kwargs, max_episode_steps=steps)
        recorded = rollout(policy, env_id, list(ours.seeds), n_envs=n, env_kwargs=env_kwargs,
                           max_episode_steps=steps, record=True).episodes
    finally:
        policy.fixed_noise = False
    # all episodes end together (fixed length), so SB3 lists them in env order = seed order
    assert list(sb3_lengths) == list(ours.lengths) == [steps] * n
    np.testing.assert_allclose(sb3_returns, ours.returns, rtol=1e-5)
    for i, episode in enumerate(recorded):
        np.testing.assert_array_equal(np.stack(sb3_actions[i]), episode.actions)
    assert len({a.tobytes() for a in (e.actions for e in recorded)}) == n  # the seeds differ


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return _pendulum_policy(tmp_path_factory.mktemp("run"))


def test_single_and_batched_box_and_dict_observations(policy):
    obs = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    start = np.ones(4, dtype=bool)
    batched, state = policy.predict(obs, episode_start=start)
    assert state is None and batched.shape == (4, 1) and batched.dtype == np.float32
    policy.reset()
    as_dict, _ = policy.predict({"state": obs}, episode_start=start)
    np.testing.assert_array_equal(batched, as_dict)
    policy.reset()
    single, _ = policy.predict(obs[2], episode_start=True)
    assert single.shape == (1,)
    np.testing.assert_allclose(single, batched[2], atol=1e-5)  # noise shared across rows
    assert np.all(np.abs(batched) <= 2.0)  # clipped to Pendulum's bounds


def test_episode_start_resets_only_those_envs(policy):
    """``predict`` with ``episode_start`` = ``reset(mask)`` then ``select_action``."""
    rng = np.random.default_rng(2)
    steps = [rng.normal(size=(3, 3)).astype(np.float32) for _ in range(7)]
    starts = [np.ones(3, bool)] + [np.zeros(3, bool)] * 6
    starts[3] = np.array([False, True, False])
    starts[4] = np.array([True, False, True])
    predicted = []
    policy.reset()
    for obs, start in zip(steps, starts, strict=True):
        predicted.append(policy.predict(obs, episode_start=start)[0])
    expected = []
    policy.reset()
    policy.fixed_noise = True
    try:
        for i, (obs, start) in enumerate(zip(steps, starts, strict=True)):
            if i > 0 and start.any():
                policy.reset(start)
            expected.append(policy.select_action({"state": obs}))
    finally:
        policy.fixed_noise = False
    np.testing.assert_array_equal(np.stack(predicted), np.stack(expected))
    # without the resets the queued actions of steps 3-4 would be replayed: the flags mattered
    policy.reset()
    no_reset = [policy.predict(obs, episode_start=starts[0] if i == 0 else None)[0]
                for i, obs in enumerate(steps)]
    assert not np.array_equal(np.stack(no_reset)[3:5], np.stack(predicted)[3:5])


def test_deterministic_ignores_the_global_rng_and_stochastic_uses_it(policy):
    obs = np.random.default_rng(3).normal(size=(2, 3)).astype(np.float32)
    start = np.ones(2, bool)
    out = {}
    for deterministic in (True, False):
        for seed in (0, 1):
            torch.manual_seed(seed)
            out[deterministic, seed] = policy.predict(obs, episode_start=start,
                                                      deterministic=deterministic)[0]
    np.testing.assert_array_equal(out[True, 0], out[True, 1])
    assert not np.array_equal(out[False, 0], out[False, 1])
    assert policy.fixed_noise is False  # predict restores the setting


def test_bad_inputs_name_the_problem(policy):
    with pytest.raises(ValueError, match="expected shape \\(3,\\)"):
        policy.predict(np.zeros((2, 4), np.float32))
    with pytest.raises(KeyError, match="missing keys"):
        policy.predict({"obs": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="episode_start"):
        policy.predict(np.zeros((2, 3), np.float32), episode_start=np.ones(3, bool))
