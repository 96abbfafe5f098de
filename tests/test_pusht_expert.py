"""PushT MPC expert: exact model, solving easy seeds, determinism, smoothness, dataset layout.

Tests that run the expert for a whole episode or rollout are ``slow``; the default suite runs the
same code on a few planning steps. Long runs (50 seeds) are in ``benchmarks/pusht_expert.py``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from rlox_dp.envs.pusht import (
    OBS_MODES,
    PUSHT_ENV_ID,
    _core_state,
    _pusht_core,
    block_keypoints,
    load_pusht_demonstrations,
    make_pusht_env,
    pusht_observations,
    set_pusht_state,
)
from rlox_dp.evaluation import EvalPolicy, rollout
from rlox_dp.experts.pusht import (
    PushTMPCConfig,
    PushTMPCExpert,
    default_pusht_demonstrations,
    generate_pusht_dataset,
    solve_episode,
)
from rlox_dp.experts.pusht.geometry import block_pose_from_keypoints
from rlox_dp.experts.pusht.model import PushTModel, sim_state

EASY_SEED = 10003  # solved in 43 steps (benchmarks/results/pusht_expert.json)


@pytest.fixture(scope="module")
def easy_episode() -> dict:
    """The MPC expert's whole episode on :data:`EASY_SEED` (43 planning steps)."""
    return solve_episode(EASY_SEED, max_steps=100)


def test_model_reproduces_env_steps_exactly() -> None:
    """Every simulated sequence follows env.step bit for bit from the same state."""
    env = make_pusht_env("state")
    env.reset(seed=3)
    core = _pusht_core(env)
    start = np.array([150.0, 150.0, 250.0, 260.0, 1.0])
    set_pusht_state(env, start)
    model = PushTModel(core)
    rng = np.random.default_rng(0)
    # paths 0-3 run through the block and push it around, paths 4-7 stay away from it
    targets = np.concatenate(
        [
            np.linspace(start[:2], [350.0, 370.0], 15)[None] + rng.normal(0, 10, (4, 15, 2)),
            np.linspace(start[:2], [60.0, 60.0], 15)[None] + rng.normal(0, 3, (4, 15, 2)),
        ]
    )
    out = model.simulate(sim_state(core), targets)
    for i in (0, 3, 5):
        set_pusht_state(env, start)
        for t in range(15):
            env.step(targets[i, t])
            np.testing.assert_array_equal(out["agent_pos"][i, t], core.agent.position)
            np.testing.assert_array_equal(out["block_pos"][i, t], core.block.position)
            np.testing.assert_array_equal(out["block_angle"][i, t], core.block.angle)
    assert np.abs(out["block_pos"][0, -1] - start[2:4]).max() > 10, "path 0 should push the block"
    env.close()


@pytest.mark.slow  # a whole episode of MPC planning
def test_solves_an_easy_seed_with_smooth_actions(easy_episode: dict) -> None:
    result = easy_episode
    assert result["success"], f"max coverage {result['coverage'].max():.3f}"
    assert result["coverage"][-1] > 0.95 and result["coverage"][:-1].max() <= 0.95
    actions, states = result["actions"], result["states"]
    assert actions.dtype == np.float32 and actions.shape == (len(states), 2)
    assert states.shape == (len(actions), 5) and result["coverage"].shape == (len(actions),)
    # smoothness: no target jumps by more than max_step (plus float32 rounding), human-like mean
    steps = np.linalg.norm(np.diff(np.vstack([states[:1, :2], actions]), axis=0), axis=1)
    assert steps.max() <= PushTMPCConfig().max_step + 1e-3
    assert steps.mean() <= 15.0


def assert_replays_exactly(episode: dict, seed: int) -> None:
    """The recorded actions of ``episode`` (solved from reset seed ``seed``) replay it exactly."""
    env = make_pusht_env("state", max_episode_steps=None)
    env.reset(seed=seed)
    for t, action in enumerate(episode["actions"]):
        np.testing.assert_array_equal(_core_state(_pusht_core(env)), episode["states"][t])
        _, _, _, _, info = env.step(action)
        # shapely's intersection area may differ in the last bit between calls
        np.testing.assert_allclose(info["coverage"], episode["coverage"][t], rtol=1e-12)
    env.close()


@pytest.mark.slow  # a whole episode of MPC planning
def test_recorded_actions_replay_the_episode_exactly(easy_episode: dict) -> None:
    assert_replays_exactly(easy_episode, EASY_SEED)


def test_recorded_actions_replay_a_short_episode_exactly() -> None:
    assert_replays_exactly(solve_episode(EASY_SEED, max_steps=6), EASY_SEED)


def test_deterministic_given_seeds() -> None:
    first = solve_episode(7, max_steps=8)
    again = solve_episode(7, max_steps=8)
    other = solve_episode(7, max_steps=8, rng_seed=123)
    np.testing.assert_array_equal(first["actions"], again["actions"])
    np.testing.assert_array_equal(first["states"], again["states"])
    assert not np.array_equal(first["actions"], other["actions"])


def test_keypoint_pose_fit_inverts_block_keypoints() -> None:
    rng = np.random.default_rng(0)
    poses = np.column_stack([rng.uniform(50, 450, (20, 2)), rng.uniform(-np.pi, np.pi, 20)])
    fitted = block_pose_from_keypoints(block_keypoints(poses))
    np.testing.assert_allclose(fitted[:, :2], poses[:, :2], atol=1e-9)
    np.testing.assert_allclose(np.cos(fitted[:, 2] - poses[:, 2]), 1.0, atol=1e-12)


def test_eval_policy_plans_a_bounded_step_and_checks_its_input() -> None:
    policy = PushTMPCExpert("keypoints", rng=0)
    assert isinstance(policy, EvalPolicy)
    env = make_pusht_env("state")
    obs, _ = env.reset(seed=EASY_SEED)
    # "state" observations: one planning step, a target at most max_step from the agent
    action = PushTMPCExpert("state", rng=0).select_action({"state": obs["state"][None]})
    assert action.shape == (1, 2) and action.dtype == np.float32
    assert np.linalg.norm(action[0] - obs["state"][:2]) <= PushTMPCConfig().max_step + 1e-3
    env.close()
    with pytest.raises(ValueError, match="obs\\['state'\\]"):
        policy.select_action({"state": np.zeros((2, 7), np.float32)})
    with pytest.raises(ValueError, match="obs_mode"):
        PushTMPCExpert("image")


@pytest.mark.slow  # a 30-step MPC rollout
def test_eval_policy_pushes_the_block_towards_the_goal() -> None:
    policy = PushTMPCExpert("keypoints", rng=0)
    env = make_pusht_env("state")
    _, info = env.reset(seed=EASY_SEED)
    start = info["coverage"]
    env.close()
    result = rollout(
        policy,
        PUSHT_ENV_ID,
        [EASY_SEED],
        n_envs=1,
        env_kwargs={"obs_mode": "keypoints"},
        max_episode_steps=30,
    )
    assert result.episodes[0].score > min(1.0, start / 0.95 + 0.3)


def test_dataset_has_the_human_layout_and_loads_in_every_obs_mode(tmp_path: Path) -> None:
    import zarr

    path = generate_pusht_dataset(
        tmp_path / "mpc.zarr",
        n_episodes=2,
        seed=5,
        max_steps=4,
        only_successful=False,
        with_images=True,
        progress=False,
    )
    root = zarr.open_group(str(path), mode="r")
    n = 8
    assert root["data/state"].shape == (n, 5) and root["data/state"].dtype == np.float32
    assert root["data/keypoint"].shape == (n, 9, 2) and root["data/action"].shape == (n, 2)
    assert root["data/img"].shape == (n, 96, 96, 3) and root["data/img"].dtype == np.float32
    np.testing.assert_array_equal(root["meta/episode_ends"][:], [4, 8])
    np.testing.assert_array_equal(root["meta/episode_seeds"][:], [5, 6])
    meta = dict(root.attrs)["metadata"]
    assert meta["seeds"] == [5, 6] and meta["success"] == [False, False]
    assert meta["success_rate"] == 0.0 and len(meta["final_coverage"]) == 2
    state = root["data/state"][:]
    np.testing.assert_allclose(
        root["data/keypoint"][:], block_keypoints(state[:, 2:].astype(np.float64)), atol=1e-3
    )
    episode = solve_episode(5, max_steps=4, with_images=True)
    np.testing.assert_array_equal(state[:4], episode["states"].astype(np.float32))
    np.testing.assert_array_equal(root["data/action"][:4], episode["actions"])
    for obs_mode in OBS_MODES:
        demos = load_pusht_demonstrations(path, obs_mode)
        expected = pusht_observations({"state": state, "img": root["data/img"][:]}, obs_mode)
        assert demos.n_episodes == 2 and demos.actions.shape == (n, 2)
        for key, value in expected.items():
            np.testing.assert_array_equal(demos.observations[key], value)
    np.testing.assert_array_equal(
        load_pusht_demonstrations(path, "image").observations["image"][:4],
        np.moveaxis(episode["images"], -1, 1),
    )
    with pytest.raises(RuntimeError, match="only_successful"):
        generate_pusht_dataset(
            tmp_path / "none.zarr", n_episodes=1, seed=5, max_steps=2, progress=False
        )
    assert not (tmp_path / "none.zarr").exists()


@pytest.mark.slow  # the expert solves a whole episode
def test_default_demonstrations_are_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    demos = default_pusht_demonstrations(
        "state", n_episodes=1, seed=EASY_SEED, cache_dir=tmp_path, progress=False
    )
    assert (tmp_path / "demos" / f"pusht-mpc-1-{EASY_SEED}.zarr").is_dir()
    assert demos.n_episodes == 1 and demos.observations["state"].shape[1] == 6

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached dataset should be reused")

    monkeypatch.setattr("rlox_dp.experts.pusht.dataset.generate_pusht_dataset", fail)
    again = default_pusht_demonstrations(
        "keypoints", n_episodes=1, seed=EASY_SEED, cache_dir=tmp_path, progress=False
    )
    assert again.observations["state"].shape == (demos.n_steps, 20)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("horizon", 0),
        ("n_knots", 13),
        ("n_elites", 40),
        ("max_step", 0.0),
        ("angle_weight", -1.0),
        ("noise_std", float("nan")),
        ("n_samples", 2.5),
    ],
)
def test_config_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(PushTMPCConfig(), **{field: value})


def test_bad_arguments_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_steps"):
        solve_episode(0, max_steps=0)
    with pytest.raises(ValueError, match="path"):
        generate_pusht_dataset(tmp_path / "x.npz", n_episodes=1, progress=False)
    with pytest.raises(ValueError, match="n_episodes"):
        generate_pusht_dataset(tmp_path / "x.zarr", n_episodes=0, progress=False)
    with pytest.raises(ValueError, match="obs_mode"):
        default_pusht_demonstrations("pixels", cache_dir=tmp_path)


def test_default_demonstrations_reuse_the_cached_store(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A store already at the cache path (written here: one short episode) is loaded, in any
    observation mode, without running the expert."""
    generate_pusht_dataset(tmp_path / "demos" / f"pusht-mpc-1-{EASY_SEED}.zarr", n_episodes=1,
                           seed=EASY_SEED, max_steps=4, only_successful=False, progress=False)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached dataset should be reused")

    monkeypatch.setattr("rlox_dp.experts.pusht.dataset.generate_pusht_dataset", fail)
    for obs_mode, dim in (("state", 6), ("keypoints", 20)):
        demos = default_pusht_demonstrations(obs_mode, n_episodes=1, seed=EASY_SEED,
                                             cache_dir=tmp_path, progress=False)
        assert demos.n_episodes == 1 and demos.observations["state"].shape == (4, dim)
