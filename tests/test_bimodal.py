"""Tests for the BimodalPoint env and its scripted two-mode expert."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlox_dp.envs import BIMODAL_ENV_ID, BimodalPointEnv, make_env
from rlox_dp.evaluation import evaluate_policy
from rlox_dp.experts import BimodalPointExpert, collect_demonstrations, get_expert


class ZeroPolicy:
    def reset(self, env_mask=None):
        pass

    def select_action(self, obs):
        return np.zeros((obs["state"].shape[0], 2), dtype=np.float32)


class MeanOfModesPolicy:
    """The average of the left and the right expert: what regression on both modes converges to."""

    def __init__(self):
        self.left = BimodalPointExpert(0, mode="left")
        self.right = BimodalPointExpert(0, mode="right")
        self.actions = []
        self.positions = []

    def reset(self, env_mask=None):
        self.left.reset(env_mask)
        self.right.reset(env_mask)

    def select_action(self, obs):
        action = (self.left.select_action(obs) + self.right.select_action(obs)) / 2
        self.actions.append(action)
        self.positions.append(obs["state"][:, :2].copy())
        return action


def test_registered_with_time_limit():
    assert BIMODAL_ENV_ID in gym.registry
    assert gym.registry[BIMODAL_ENV_ID].max_episode_steps == 100
    env = make_env(BIMODAL_ENV_ID)
    assert isinstance(env.unwrapped, BimodalPointEnv)
    env.close()


def test_reset_is_seeded_and_near_nominal_positions():
    env = BimodalPointEnv()
    obs_a, info = env.reset(seed=3)
    obs_b, _ = env.reset(seed=3)
    obs_c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert not np.array_equal(obs_a, obs_c)
    assert obs_a.dtype == np.float32 and obs_a.shape == (2,)
    starts = np.array([env.reset(seed=s)[0] for s in range(200)])
    assert np.all(np.abs(starts - [0, -1]) <= [0.3 + 1e-6, 0.1 + 1e-6])
    assert starts[:, 0].min() < -0.25 and starts[:, 0].max() > 0.25
    assert info == {"is_success": False, "collision": False}


@pytest.mark.parametrize("x", [0.0, 0.2])
def test_driving_up_hits_the_obstacle_and_fails(x):
    env = BimodalPointEnv(start_noise_x=0.0, start_noise_y=0.0)
    env.reset(seed=0)
    env.unwrapped._position = np.array([x, -1.0])
    for _ in range(40):
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0]))
        if terminated:
            break
    assert terminated and not truncated
    assert info == {"is_success": False, "collision": True} and reward == -1.0
    # the point stops outside the diamond, at the last free position on the way up
    l1 = np.abs(obs).sum()
    assert env.obstacle_size <= l1 <= env.obstacle_size + env.max_speed + 1e-6


def test_segment_collision_is_exact():
    env = BimodalPointEnv(max_speed=0.5, start_noise_x=0.0, start_noise_y=0.0)
    env.reset(seed=0)
    env.unwrapped._position = np.array([-0.3, -0.3])  # L1 = 0.6, outside
    # neither end point is inside (L1 0.6 and 0.5) but the segment cuts through (0, -0.3)
    _, _, terminated, _, info = env.step(np.array([1.0, 0.0]) * 1.2)
    assert terminated and info["collision"]


def test_step_clips_actions_and_validates_shape():
    env = BimodalPointEnv(start_noise_x=0.0, start_noise_y=0.0)
    obs, _ = env.reset(seed=0)
    obs2, reward, terminated, _, _ = env.step(np.array([10.0, 0.0]))
    np.testing.assert_allclose(obs2 - obs, [env.max_speed, 0.0], atol=1e-6)
    assert reward == 0.0 and not terminated
    with pytest.raises(ValueError, match="action: expected shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan, 0.0]))


def test_constructor_validation():
    with pytest.raises(ValueError, match="render_mode"):
        BimodalPointEnv(render_mode="human")
    with pytest.raises(ValueError, match="max_speed"):
        BimodalPointEnv(max_speed=0.0)
    with pytest.raises(ValueError, match="start_noise_x"):
        BimodalPointEnv(start_noise_x=0.6)


def test_render_rgb_array():
    env = BimodalPointEnv(render_mode="rgb_array", render_size=64)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    assert (frame == [120, 120, 120]).all(-1).sum() > 100  # the obstacle is drawn
    assert (frame == [40, 80, 220]).all(-1).any()  # the agent is drawn
    assert BimodalPointEnv().render() is None


def test_expert_solves_every_episode_with_both_modes():
    expert = get_expert(BIMODAL_ENV_ID, seed=0)
    demos = collect_demonstrations(BIMODAL_ENV_ID, expert, n_episodes=20, seed=10_000, n_envs=4)
    assert demos.metadata["success_rate"] == 1.0
    assert demos.episode_lengths.max() < 70  # well inside the 100-step limit
    x = demos.observations["state"][:, 0]
    starts = np.concatenate([[0], demos.episode_ends[:-1]])
    # side of each episode: where it passes the obstacle (its x at the end of the episode half)
    mid_x = np.array([x[(s + e) // 2] for s, e in zip(starts, demos.episode_ends, strict=True)])
    n_right, n_left = int((mid_x > 0.4).sum()), int((mid_x < -0.4).sum())
    assert n_left + n_right == 20 and n_left >= 3 and n_right >= 3


@pytest.mark.parametrize("mode", ["left", "right"])
def test_single_mode_expert_goes_around_one_side(mode):
    expert = BimodalPointExpert(0, mode=mode)
    demos = collect_demonstrations(BIMODAL_ENV_ID, expert, n_episodes=4, seed=0, n_envs=2)
    assert demos.metadata["success_rate"] == 1.0
    state = demos.observations["state"]
    above = state[:, 1] > -0.5  # beside and above the obstacle
    sign = 1 if mode == "right" else -1
    assert np.all(sign * state[above, 0] > 0)


def test_expert_paths_share_the_split_point():
    demos = collect_demonstrations(BIMODAL_ENV_ID, BimodalPointExpert(1), n_episodes=6, seed=0)
    split = BimodalPointExpert(0).split.astype(np.float32)
    starts = np.concatenate([[0], demos.episode_ends[:-1]])
    for s, e in zip(starts, demos.episode_ends, strict=True):
        hits = np.abs(demos.observations["state"][s:e] - split).max(-1) < 1e-6
        assert hits.sum() == 1  # every episode passes through W1 exactly once


def test_zero_policy_fails():
    result = evaluate_policy(ZeroPolicy(), BIMODAL_ENV_ID, n_episodes=4, n_envs=4)
    assert result.successes is not None and not result.successes.any()
    assert np.all(result.lengths == 100)


def test_mean_of_modes_policy_collides_every_episode():
    policy = MeanOfModesPolicy()
    result = evaluate_policy(policy, BIMODAL_ENV_ID, n_episodes=8, n_envs=4)
    assert result.successes is not None and not result.successes.any()
    np.testing.assert_array_equal(result.returns, -1.0)  # every episode ends in a collision
    positions = np.concatenate(policy.positions)
    actions = np.concatenate(policy.actions)
    # above the split point the averaged action never moves away from the axis x = 0
    above = positions[:, 1] > BimodalPointExpert(0).split[1] + 1e-5
    assert above.any()
    assert np.all(positions[above, 0] * actions[above, 0] <= 1e-6)
    assert np.all(np.abs(positions[above, 0]) < 1e-4)


def test_expert_reset_mask_redraws_only_masked_envs():
    expert = BimodalPointExpert(np.random.default_rng(1))
    obs = {"state": np.tile(np.array([[0.0, -0.5]], dtype=np.float32), (64, 1))}
    obs["state"][:, 1] = -0.55  # above the split point: the side decides the action
    first = expert.select_action(obs)
    assert set(np.sign(first[:, 0])) == {-1.0, 1.0}
    mask = np.zeros(64, dtype=bool)
    mask[:32] = True
    expert.reset(mask)
    second = expert.select_action(obs)
    np.testing.assert_array_equal(second[32:], first[32:])
    assert not np.array_equal(second[:32], first[:32])
    with pytest.raises(ValueError, match="env_mask"):
        expert.reset(np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="call reset"):
        expert.select_action({"state": obs["state"][:5]})
    with pytest.raises(ValueError, match="mode"):
        BimodalPointExpert(0, mode="up")
    with pytest.raises(ValueError, match=r"obs\['state'\]: expected shape"):
        BimodalPointExpert(0).select_action({"state": np.zeros((2, 4))})
