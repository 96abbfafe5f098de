"""Expert labels (rlox_dp.experts.labelling): a label is exactly what the expert does from that state."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest

from rlox_dp.envs import BIMODAL_ENV_ID, make_env
from rlox_dp.experts import BimodalPointExpert, SB3Expert
from rlox_dp.experts import registry as registry_module
from rlox_dp.experts.labelling import (
    STATE_ACCESS,
    LabellingError,
    PushTMPCLabeller,
    StateAccess,
    get_labeller,
    pusht_raw_state,
    register_state_access,
)

HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None


def continue_with_expert(env, obs, expert, horizon, capture):
    """Let ``expert`` act from ``env``'s current state: (actions, observations, sim states)."""
    actions, observations, states = [], [], []
    expert.reset(None)
    for _ in range(horizon):
        action = expert.select_action({k: v[None] for k, v in obs.items()})[0].astype(env.action_space.dtype)
        actions.append(action)
        observations.append(obs)
        states.append(capture(env))
        obs, _, terminated, _, _ = env.step(action)
        if terminated:
            break
    return (np.stack(actions), {k: np.stack([o[k] for o in observations]) for k in obs},
            np.stack(states))


def assert_label_is_expert(chunk, actions, observations, states):
    np.testing.assert_array_equal(chunk.actions, actions)
    np.testing.assert_array_equal(chunk.sim_states, states)
    assert set(chunk.observations) == set(observations)
    for key in observations:
        np.testing.assert_array_equal(chunk.observations[key], observations[key])


SB3_ENVS = ["Pendulum-v1", "MountainCarContinuous-v0",
            pytest.param("InvertedDoublePendulum-v5",
                         marks=pytest.mark.skipif(not HAS_MUJOCO, reason="needs mujoco"))]


@pytest.mark.parametrize("env_id", SB3_ENVS)
def test_sb3_labels_equal_the_policy_rolled_forward(env_id):
    """An (untrained, deterministic) SB3 policy: the label from a mid-episode state equals the
    policy continuing the original env from it, actions and observations bit for bit."""
    from stable_baselines3 import SAC

    expert = SB3Expert(SAC("MlpPolicy", gym.make(env_id), seed=0, device="cpu"))
    labeller = get_labeller(env_id, 6, expert=expert)
    env = make_env(env_id)
    obs, _ = env.reset(seed=5)
    for _ in range(2):  # MountainCar's state turns float32 after a step: restored with its dtype
        obs, *_ = env.step(np.zeros(env.action_space.shape, dtype=env.action_space.dtype))
    state = labeller.capture(env)
    chunk = labeller.label(np.stack([state, state]))[1]
    assert_label_is_expert(chunk, *continue_with_expert(env, obs, expert, 6, labeller.capture))
    assert len(chunk.actions) == 6 or chunk.terminated


@pytest.mark.slow
@pytest.mark.parametrize("env_id", SB3_ENVS)
def test_builtin_sb3_expert_labels(env_id):
    """The built-in (trained, cached) experts label like they act; trains them if not cached."""
    labeller = get_labeller(env_id, 8)
    expert = registry_module.get_expert(env_id)
    env = make_env(env_id)
    obs, _ = env.reset(seed=11)
    obs, *_ = env.step(env.action_space.sample())
    chunk = labeller.label(labeller.capture(env)[None])[0]
    assert_label_is_expert(chunk, *continue_with_expert(env, obs, expert, 8, labeller.capture))


def test_bimodal_labels_keep_to_the_state_side():
    labeller = get_labeller(BIMODAL_ENV_ID, 10)
    env = make_env(BIMODAL_ENV_ID)
    obs, _ = env.reset(seed=3)
    for action in [[1.0, 0.0]] * 14 + [[0.0, 1.0]] * 12:  # right of the obstacle, above W1
        obs, _, terminated, _, _ = env.step(np.array(action, dtype=np.float32))
    assert not terminated and obs["state"][0] > 0.3 and obs["state"][1] > -0.55
    chunk = labeller.label(labeller.capture(env)[None], seed=4)[0]
    assert_label_is_expert(chunk, *continue_with_expert(
        env, obs, BimodalPointExpert(4, mode="nearest"), 10, labeller.capture))
    assert np.all(chunk.observations["state"][:, 0] > 0)  # it keeps to the right of the obstacle


def test_bimodal_nearest_mode_draws_ties():
    expert = BimodalPointExpert(0, mode="nearest")
    state = np.array([[0.2, 0.0], [-0.2, 0.0], [0.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    expert.select_action({"state": state})
    assert expert._sides[:2].tolist() == [1, -1] and set(expert._sides[2:].tolist()) <= {-1, 1}


def test_pusht_labels_equal_the_planner_from_the_exact_state():
    """PushT: the MPC expert's label from a state with moving agent equals a fresh planner (same
    sample seed) driving the original env from that state, keypoints included. (The agent moves
    away from the block: a state does not carry pymunk's contact caches, see the module docstring.)"""
    from rlox_dp.envs.pusht import _pusht_core
    from rlox_dp.experts.pusht.model import sim_state
    from rlox_dp.experts.pusht.planner import EpisodePlanner, PushTMPCConfig

    config = PushTMPCConfig(horizon=4, n_knots=2, n_samples=8, n_iterations=1, n_elites=2)
    labeller = PushTMPCLabeller(5, {"obs_mode": "keypoints"}, config)
    env = make_env("gym_pusht/PushT-v0", env_kwargs={"obs_mode": "keypoints"})
    obs, _ = env.reset(seed=2)  # (seed 1 starts the block pressed into a wall: a contact)
    core = _pusht_core(env)
    away = np.asarray(core.agent.position) - np.asarray(core.block.position)  # no contact: a state
    target = np.asarray(core.agent.position) + 15.0 * away / np.linalg.norm(away)  # has no contact cache
    obs, *_ = env.step(target.astype(np.float32))
    state = labeller.capture(env)
    assert np.linalg.norm(state[2:4]) > 0  # the agent moves: its velocity is part of the state
    chunk = labeller.label(state[None], seed=9)[0]

    planner = EpisodePlanner(labeller.expert.model, labeller.expert.geometry, config,
                              np.random.default_rng([9, 0]), np.array(core.agent.position))
    actions, observations, states = [], [], []
    for _ in range(5):
        observations.append(obs)
        states.append(labeller.capture(env))
        actions.append(planner.act(sim_state(core)))
        obs, *_ = env.step(actions[-1])
    assert_label_is_expert(chunk, np.stack(actions), {"state": np.stack([o["state"] for o in observations])},
                           np.stack(states))
    # the dataset rows of the states give back the observations (PushT zarr layout)
    from rlox_dp.envs.pusht import pusht_observations

    np.testing.assert_array_equal(pusht_observations({"state": pusht_raw_state(chunk.sim_states)},
                                                     "keypoints")["state"], chunk.observations["state"])


@pytest.mark.parametrize("env_id", sorted(STATE_ACCESS))
def test_restore_then_capture_round_trips(env_id):
    if env_id == "InvertedDoublePendulum-v5" and not HAS_MUJOCO:
        pytest.skip("needs mujoco")
    env = make_env(env_id)
    env.reset(seed=2)
    env.step(env.action_space.sample())
    access = STATE_ACCESS.get(env_id)
    state = access.capture(env)
    copy = make_env(env_id)
    copy.reset(seed=0)
    access.restore(copy, state)
    np.testing.assert_array_equal(access.capture(copy), state)
    for key, value in access.observe(env).items():
        np.testing.assert_array_equal(access.observe(copy)[key], value)


@pytest.mark.skipif(not HAS_MUJOCO, reason="needs mujoco")
def test_mujoco_restore_reproduces_the_observed_constraint_force():
    """InvertedDoublePendulum's observation holds the cart's rail-limit force of the step's start
    (stale after ``mj_step``): a restore that recomputed it would change what the expert sees."""
    env, copy = make_env("InvertedDoublePendulum-v5"), make_env("InvertedDoublePendulum-v5")
    env.reset(seed=0)
    core = env.unwrapped
    qpos, qvel = core.data.qpos.copy(), core.data.qvel.copy()
    qpos[0], qvel[0] = 0.95, 3.0  # the cart about to hit its rail limit at x = 1
    core.set_state(qpos, qvel)
    import mujoco

    access, stale = STATE_ACCESS.get("InvertedDoublePendulum-v5"), 0
    for _ in range(3):
        obs, *_ = env.step(np.ones(1, dtype=np.float32))
        copy.reset(seed=1)
        access.restore(copy, access.capture(env))
        np.testing.assert_array_equal(access.observe(copy)["state"], obs["state"])
        mujoco.mj_forward(copy.unwrapped.model, copy.unwrapped.data)  # what a fresh forward pass gives
        stale += not np.array_equal(access.observe(copy)["state"], obs["state"])
    assert stale > 0  # the case this test is about did occur
    with pytest.raises(LabellingError, match=r"state: expected a MuJoCo state of shape \(13,\).*got \(10,\)"):
        access.restore(copy, np.zeros(10))  # e.g. a state captured before qfrc_constraint was part of it


def test_every_builtin_expert_env_can_be_labelled():
    assert set(registry_module.expert_env_ids()) | {"gym_pusht/PushT-v0"} == set(STATE_ACCESS)


def test_clear_errors():
    with pytest.raises(LabellingError, match=r"'Hopper-v5' has no expert that can label"):
        get_labeller("Hopper-v5", 4)
    registry_module.register_expert("Acrobot-v1")(lambda cache_dir, progress, seed: None)
    try:
        with pytest.raises(LabellingError, match=r"cannot restore a simulator state.*register_state_access"):
            get_labeller("Acrobot-v1", 4)
    finally:
        registry_module.EXPERTS.unregister("Acrobot-v1")
    with pytest.raises(ValueError, match=r"horizon: expected an int >= 1, got 0"):
        get_labeller(BIMODAL_ENV_ID, 0)
    with pytest.raises(ValueError, match=r"states: expected a finite \(B, D_state\) array"):
        get_labeller(BIMODAL_ENV_ID, 2).label(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match="MPC expert"):
        get_labeller("gym_pusht/PushT-v0", 2, expert=BimodalPointExpert(0))


def test_state_access_registry_follows_the_registry_rules():
    access = STATE_ACCESS.get("pendulum-V1")  # lookup ignores case
    assert access is STATE_ACCESS.get("Pendulum-v1")
    with pytest.raises(ValueError, match=r"'PENDULUM-v1' is already registered \(as 'Pendulum-v1'\)"):
        register_state_access("PENDULUM-v1", StateAccess(access.capture, access.restore, access.observe))
    register_state_access("Pendulum-v1", access)  # the same object again: allowed
    with pytest.raises(ValueError, match=r"unknown state access 'Pendulm-v1'\. Did you mean 'Pendulum-v1'\?"):
        STATE_ACCESS.get("Pendulm-v1")
