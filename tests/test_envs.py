"""Tests for rlox_dp.envs.factory: dict observations, errors, vector envs."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from rlox_dp.envs import BIMODAL_ENV_ID, env_spaces, make_env, make_vec_env
from rlox_dp.envs.factory import StateDictObservation


def test_make_env_box_observation_becomes_state_dict():
    env = make_env("Pendulum-v1")
    try:
        assert isinstance(env.observation_space, gym.spaces.Dict)
        assert list(env.observation_space.keys()) == ["state"]
        assert env.observation_space["state"].shape == (3,)
        obs, _ = env.reset(seed=0)
        assert set(obs) == {"state"} and obs["state"].shape == (3,)
        assert env.observation_space.contains(obs)
        obs, *_ = env.step(np.zeros(1, dtype=np.float32))
        assert obs["state"].shape == (3,)
    finally:
        env.close()


def test_make_env_passes_kwargs_and_time_limit():
    env = make_env("Pendulum-v1", env_kwargs={"g": 5.0}, max_episode_steps=3)
    try:
        assert env.unwrapped.g == 5.0
        env.reset(seed=0)
        truncated = [env.step(np.zeros(1, dtype=np.float32))[3] for _ in range(3)]
        assert truncated == [False, False, True]
    finally:
        env.close()


def test_make_env_module_prefix_imports_module():
    env = make_env("gymnasium.envs.classic_control:Pendulum-v1")
    assert env.observation_space["state"].shape == (3,)
    env.close()


def test_unknown_env_id_suggests_close_matches():
    with pytest.raises(ValueError, match=r"env: unknown environment id 'Pendulm-v1'.*Pendulum-v1"):
        make_env("Pendulm-v1")


def test_discrete_action_space_is_rejected():
    with pytest.raises(ValueError, match=r"continuous Box action spaces.*Discrete\(2\)"):
        make_env("CartPole-v1")


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_env("Pendulum-v1", max_episode_steps=0)
    with pytest.raises(ValueError, match="n_envs"):
        make_vec_env("Pendulum-v1", 0)
    with pytest.raises(ValueError, match="autoreset_mode: expected one of"):
        make_vec_env("Pendulum-v1", 1, autoreset_mode="Sometimes")
    with pytest.raises(TypeError, match="Box observation space"):
        StateDictObservation(gym.make("FrozenLake-v1"))


def test_env_spaces():
    obs_space, act_space = env_spaces(BIMODAL_ENV_ID)
    assert isinstance(obs_space, gym.spaces.Dict) and obs_space["state"].shape == (2,)
    assert isinstance(act_space, gym.spaces.Box) and act_space.shape == (2,)


def test_make_vec_env_batches_dict_observations_and_seeds():
    envs = make_vec_env("Pendulum-v1", 3, seed=7)
    try:
        assert envs.num_envs == 3
        obs, _ = envs.reset(seed=[7, 8, 9])
        obs2, _ = envs.reset(seed=[7, 8, 9])
        assert obs["state"].shape == (3, 3)
        np.testing.assert_array_equal(obs["state"], obs2["state"])
        assert not np.allclose(obs["state"][0], obs["state"][1])
        single = make_env("Pendulum-v1")
        np.testing.assert_array_equal(single.reset(seed=8)[0]["state"], obs["state"][1])
        single.close()
        out = envs.step(np.zeros((3, 1), dtype=np.float32))
        assert out[0]["state"].shape == (3, 3) and out[1].shape == (3,)
    finally:
        envs.close()


def test_make_vec_env_disabled_autoreset_with_reset_mask():
    envs = make_vec_env("Pendulum-v1", 2, autoreset_mode="Disabled", max_episode_steps=2)
    try:
        assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.DISABLED
        envs.reset(seed=[0, 1])
        act = np.zeros((2, 1), dtype=np.float32)
        envs.step(act)
        _, _, _, truncated, _ = envs.step(act)
        assert truncated.all()
        obs, _ = envs.reset(seed=[5, None], options={"reset_mask": np.array([True, True])})
        single = make_env("Pendulum-v1")
        np.testing.assert_array_equal(obs["state"][0], single.reset(seed=5)[0]["state"])
        single.close()
    finally:
        envs.close()
