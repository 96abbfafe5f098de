"""Tests for rlox_dp.evaluation: seeding, scheduling, masks, success and score detection."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlox_dp.envs import BIMODAL_ENV_ID
from rlox_dp.evaluation import EvalPolicy, evaluate_policy, rollout

FAKE_ID = "rlox_dp_test/Fake-v0"


class FakeEnv(gym.Env):
    """Episode length 2..6, success and coverage drawn from the reset seed; obs = [x, t]."""

    metadata = {"render_modes": []}

    def __init__(self, success_key: str | None = "is_success", coverage: bool = True):
        self.observation_space = gym.spaces.Box(-10, 10, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1, 1, shape=(1,), dtype=np.float32)
        self.success_key = success_key
        self.coverage = coverage

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.length = int(self.np_random.integers(2, 7))
        self.succeeds = bool(self.np_random.integers(2))
        self.max_coverage = float(self.np_random.uniform(0.5, 1.2))
        self.x = float(self.np_random.uniform(-1, 1))
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        return np.array([self.x, self.t], dtype=np.float32)

    def step(self, action):
        self.t += 1
        reward = 1.0 + float(action[0]) * self.x
        terminated = self.t >= self.length
        info = {}
        if self.success_key is not None:
            info[self.success_key] = terminated and self.succeeds
        if self.coverage:
            info["coverage"] = self.max_coverage * self.t / self.length
        return self._obs(), reward, terminated, False, info


def expected_episode(seed: int) -> FakeEnv:
    env = FakeEnv()
    env.reset(seed=seed)
    return env


if FAKE_ID not in gym.registry:
    gym.register(FAKE_ID, entry_point=FakeEnv)


class CheckingPolicy:
    """Linear deterministic policy that checks it is reset exactly when an episode starts."""

    def __init__(self):
        self.steps: np.ndarray | None = None
        self.reset_calls: list[np.ndarray | None] = []

    def reset(self, env_mask=None):
        self.reset_calls.append(None if env_mask is None else env_mask.copy())
        if env_mask is None:
            self.steps = None
        else:
            self.steps[env_mask] = 0

    def select_action(self, obs):
        state = obs["state"]
        if self.steps is None:
            self.steps = np.zeros(len(state), dtype=np.int64)
        # obs carries the env's step counter t: it restarts at 0 exactly when we were reset
        np.testing.assert_array_equal(state[:, 1], self.steps)
        self.steps += 1
        return (0.5 * state[:, :1]).astype(np.float32)


def test_policies_satisfy_protocol():
    assert isinstance(CheckingPolicy(), EvalPolicy)


@pytest.mark.parametrize("n_envs", [1, 3, 20])
def test_exactly_n_episodes_with_consecutive_seeds(n_envs):
    policy = CheckingPolicy()
    result = evaluate_policy(policy, FAKE_ID, n_episodes=7, n_envs=n_envs, seed=100)
    np.testing.assert_array_equal(result.seeds, np.arange(100, 107))
    expected = [expected_episode(s) for s in range(100, 107)]
    np.testing.assert_array_equal(result.lengths, [e.length for e in expected])
    np.testing.assert_allclose(result.returns, [e.length * (1 + 0.5 * e.x**2) for e in expected],
                               rtol=1e-5)
    np.testing.assert_array_equal(result.successes, [e.succeeds for e in expected])
    np.testing.assert_allclose(result.scores, [min(1.0, e.max_coverage / 0.95) for e in expected])
    assert result.env_steps == result.lengths.sum()  # filler steps are not counted
    assert policy.reset_calls[0] is None


def test_results_do_not_depend_on_n_envs():
    a = evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=9, n_envs=1, seed=3)
    b = evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=9, n_envs=3, seed=3)
    for field in ("returns", "lengths", "successes", "scores", "seeds"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_reset_masks_mark_the_envs_that_restart():
    # CheckingPolicy already fails if an env restarts without being in the mask or vice versa;
    # here the whole sequence of masks is also compared with a simulation of the schedule.
    policy = CheckingPolicy()
    evaluate_policy(policy, FAKE_ID, n_episodes=5, n_envs=2, seed=0)
    sims = [expected_episode(0), expected_episode(1)]
    ends, real = [sims[0].length, sims[1].length], [True, True]
    next_seed, finished, t, expected_masks = 2, 0, 0, []
    while True:
        t += 1
        done = np.array([end == t for end in ends])
        finished += sum(bool(done[i] and real[i]) for i in range(2))
        if finished == 5:
            break
        if done.any():
            expected_masks.append(done)
            for i in np.flatnonzero(done):
                real[i] = next_seed < 5
                sims[i].reset(seed=next_seed if real[i] else None)  # filler: no seed
                next_seed += int(real[i])
                ends[i] = t + sims[i].length
    assert policy.reset_calls[0] is None
    assert len(policy.reset_calls) == 1 + len(expected_masks)
    for got, want in zip(policy.reset_calls[1:], expected_masks, strict=True):
        np.testing.assert_array_equal(got, want)


def test_success_and_score_detection_follow_info_keys():
    plain = evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=4, n_envs=2,
                            env_kwargs={"success_key": None, "coverage": False})
    assert plain.successes is None and plain.scores is None
    assert "eval/success_rate" not in plain.summary() and "eval/score_mean" not in plain.summary()
    alt = evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=6, n_envs=2,
                          env_kwargs={"success_key": "success", "coverage": False})
    np.testing.assert_array_equal(alt.successes, [expected_episode(s).succeeds for s in range(6)])
    summary = alt.summary()
    assert summary["eval/success_rate"] == pytest.approx(alt.successes.mean())
    assert summary["eval/n_episodes"] == 6.0 and summary["eval/env_steps_per_s"] > 0
    assert set(summary) == {"eval/return_mean", "eval/return_std", "eval/length_mean",
                            "eval/success_rate", "eval/n_episodes", "eval/env_steps_per_s",
                            "eval/time_s"}


def test_time_limit_truncates():
    result = evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=6, n_envs=2,
                             max_episode_steps=3)
    np.testing.assert_array_equal(
        result.lengths, [min(3, expected_episode(s).length) for s in range(6)]
    )


def test_rollout_records_trajectories():
    out = rollout(CheckingPolicy(), FAKE_ID, [11, 5, 8], n_envs=2, record=True)
    assert [e.seed for e in out.episodes] == [11, 5, 8]
    for ep in out.episodes:
        ref = expected_episode(ep.seed)
        assert ep.observations["state"].shape == (ep.length, 2)
        np.testing.assert_array_equal(ep.observations["state"][:, 1], np.arange(ep.length))
        np.testing.assert_allclose(ep.observations["state"][:, 0], ref.x)
        np.testing.assert_allclose(ep.actions, np.full((ep.length, 1), 0.5 * ref.x), rtol=1e-6)
        assert ep.rewards.shape == (ep.length,)
        assert ep.rewards.sum() == pytest.approx(ep.episode_return)


def test_bad_inputs():
    class BadPolicy(CheckingPolicy):
        def select_action(self, obs):
            return np.zeros((len(obs["state"]), 3), dtype=np.float32)

    with pytest.raises(ValueError, match=r"select_action: expected actions of shape \(2, 1\)"):
        evaluate_policy(BadPolicy(), FAKE_ID, n_episodes=2, n_envs=2)
    with pytest.raises(ValueError, match="n_episodes"):
        evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=0)
    with pytest.raises(ValueError, match="distinct"):
        rollout(CheckingPolicy(), FAKE_ID, [1, 1])
    with pytest.raises(ValueError, match="n_videos"):
        evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=1, n_videos=1)


def test_async_matches_sync_and_progress_bar_runs():
    sync = evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=5, n_envs=2, seed=1)
    asyn = evaluate_policy(CheckingPolicy(), FAKE_ID, n_episodes=5, n_envs=2, seed=1,
                           asynchronous=True, progress=True)
    np.testing.assert_array_equal(sync.returns, asyn.returns)
    np.testing.assert_array_equal(sync.lengths, asyn.lengths)


def test_videos_of_first_episodes(tmp_path: Path):
    from rlox_dp.experts import BimodalPointExpert

    evaluate_policy(BimodalPointExpert(0), BIMODAL_ENV_ID, n_episodes=3, n_envs=2, seed=4,
                    video_dir=str(tmp_path), n_videos=2, env_kwargs={"render_size": 64})
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["episode_000_seed_4.mp4", "episode_001_seed_5.mp4"]
    assert all((tmp_path / f).stat().st_size > 1000 for f in files)


class ZeroTorque:
    def reset(self, env_mask=None):
        pass

    def select_action(self, obs):
        return np.zeros((len(obs["state"]), 1), dtype=np.float32)


def test_action_noise_records_the_clean_action_and_perturbs_the_env():
    clean = rollout(ZeroTorque(), "Pendulum-v1", [0, 1], n_envs=2, record=True,
                    max_episode_steps=30).episodes
    noisy = rollout(ZeroTorque(), "Pendulum-v1", [0, 1], n_envs=2, record=True,
                    max_episode_steps=30, action_noise=0.5, noise_seed=7).episodes
    again = rollout(ZeroTorque(), "Pendulum-v1", [0, 1], n_envs=2, record=True,
                    max_episode_steps=30, action_noise=0.5, noise_seed=7).episodes
    for c, n, a in zip(clean, noisy, again, strict=True):
        np.testing.assert_array_equal(n.actions, 0.0)  # the policy's action is what is recorded
        np.testing.assert_array_equal(c.observations["state"][0], n.observations["state"][0])
        assert np.abs(c.observations["state"][1:] - n.observations["state"][1:]).max() > 1e-3
        np.testing.assert_array_equal(n.observations["state"], a.observations["state"])  # seeded
    with pytest.raises(ValueError, match="action_noise: expected a float >= 0"):
        rollout(ZeroTorque(), "Pendulum-v1", [0], action_noise=-0.1)
