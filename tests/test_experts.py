"""Tests for rlox_dp.experts: registry, cache, SB3 experts, demonstration collection."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from rlox_dp.envs import BIMODAL_ENV_ID
from rlox_dp.evaluation import evaluate_policy
from rlox_dp.experts import (
    BimodalPointExpert,
    collect_demonstrations,
    default_cache_dir,
    default_demonstrations,
    expert_env_ids,
    get_expert,
    register_expert,
)
from rlox_dp.experts import demonstrations as demonstrations_module
from rlox_dp.experts import registry as registry_module
from rlox_dp.experts.demonstrations import DEMOS_VERSION
from rlox_dp.experts.sb3 import (
    SB3_EXPERTS,
    SB3Expert,
    load_or_train_sb3_expert,
    sb3_expert_path,
)


class ZeroPolicy:
    def reset(self, env_mask=None):
        pass

    def select_action(self, obs):
        n = len(next(iter(obs.values())))
        return np.zeros((n, 1 if obs["state"].shape[1] == 3 else 2), dtype=np.float32)


class SometimesExpert:
    """Bimodal expert on a random half of the episodes, standing still on the others."""

    def __init__(self, seed: int):
        self.expert = BimodalPointExpert(seed)
        self.rng = np.random.default_rng(seed)
        self.active = None

    def reset(self, env_mask=None):
        self.expert.reset(env_mask)
        if env_mask is None:
            self.active = None
        else:
            self.active[env_mask] = self.rng.random(int(env_mask.sum())) < 0.5

    def select_action(self, obs):
        if self.active is None:
            self.active = self.rng.random(len(obs["state"])) < 0.5
        return self.expert.select_action(obs) * self.active[:, None]


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("RLOX_DP_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RLOX_DP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "rlox_dp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "rlox_dp"


def test_registry():
    ids = expert_env_ids()
    assert {"Pendulum-v1", "MountainCarContinuous-v0", "InvertedDoublePendulum-v5",
            BIMODAL_ENV_ID} <= set(ids)
    with pytest.raises(ValueError, match=r"no expert is available for 'Hopper-v5'.*demos=PATH"):
        get_expert("Hopper-v5")
    with pytest.raises(ValueError, match=r"no expert is available for 'pendulum-v2'\. Did you mean 'Pendulum-v1'\?"):
        get_expert("pendulum-v2")
    register_expert("Fake-v0")(lambda cache_dir, progress, seed: ZeroPolicy())
    try:
        assert isinstance(get_expert("Fake-v0"), ZeroPolicy)
        assert isinstance(get_expert("fake-V0"), ZeroPolicy)  # the registries' case rule
        assert "Fake-v0" in expert_env_ids()
        with pytest.raises(ValueError, match="already registered"):
            register_expert("FAKE-v0")(lambda cache_dir, progress, seed: ZeroPolicy())
    finally:
        registry_module.EXPERTS.unregister("Fake-v0")
    assert "Fake-v0" not in expert_env_ids()


def tiny_spec(**changes):
    spec = dataclasses.replace(
        SB3_EXPERTS["Pendulum-v1"],
        version="test",
        total_timesteps=64,
        extra_timesteps=32,
        max_timesteps=64,
        target_return=-np.inf,
        hyperparams={"learning_starts": 32, "batch_size": 16, "buffer_size": 1000,
                     "policy_kwargs": {"net_arch": [8]}},
    )
    return dataclasses.replace(spec, **changes)


def test_sb3_expert_is_saved_then_reused_without_training(tmp_path, monkeypatch):
    spec = tiny_spec()
    expert = load_or_train_sb3_expert(spec, cache_dir=tmp_path, progress=False, seed=3)
    path = sb3_expert_path(spec, tmp_path, 3)
    assert path == tmp_path / "experts" / "Pendulum-v1-sac-test-seed3.zip" and path.exists()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left

    from stable_baselines3 import SAC

    def no_training(*args, **kwargs):
        raise AssertionError("the cached expert must be reused, not retrained")

    monkeypatch.setattr(SAC, "learn", no_training)
    reloaded = load_or_train_sb3_expert(spec, cache_dir=tmp_path, progress=True, seed=3)
    assert isinstance(reloaded, SB3Expert)
    obs = {"state": np.random.default_rng(0).uniform(-1, 1, size=(5, 3)).astype(np.float32)}
    np.testing.assert_allclose(reloaded.select_action(obs), expert.select_action(obs), rtol=1e-6)
    assert reloaded.select_action(obs).shape == (5, 1)
    with pytest.raises(KeyError, match="state"):
        reloaded.select_action({"pixels": obs["state"]})


def test_sb3_expert_below_target_raises_and_caches_nothing(tmp_path):
    spec = tiny_spec(target_return=0.0)
    with pytest.raises(RuntimeError, match=r"mean validation return of .* after 64 steps"):
        load_or_train_sb3_expert(spec, cache_dir=tmp_path, progress=False, seed=0)
    assert not sb3_expert_path(spec, tmp_path, 0).exists()


def test_mujoco_expert_trains_caches_and_collects(tmp_path):
    """The MuJoCo expert's pipeline end to end with a tiny budget (the real one is a slow test)."""
    pytest.importorskip("mujoco")
    pytest.importorskip("imageio")
    spec = dataclasses.replace(
        SB3_EXPERTS["InvertedDoublePendulum-v5"], version="test", total_timesteps=64,
        extra_timesteps=32, max_timesteps=64, target_return=-np.inf,
        hyperparams={"learning_starts": 32, "batch_size": 16, "buffer_size": 1000,
                     "policy_kwargs": {"net_arch": [8]}})
    expert = load_or_train_sb3_expert(spec, cache_dir=tmp_path, progress=False, seed=0)
    assert sb3_expert_path(spec, tmp_path, 0).exists()
    demos = collect_demonstrations("InvertedDoublePendulum-v5", expert, n_episodes=2, seed=10_000)
    assert demos.observations["state"].shape[1:] == (9,) and demos.actions.shape[1:] == (1,)
    assert len(demos.episode_ends) == 2 and demos.metadata["episode_returns"][0] > 0


def test_missing_simulator_is_named_before_training(tmp_path, monkeypatch):
    spec = dataclasses.replace(SB3_EXPERTS["InvertedDoublePendulum-v5"],
                               requires=(("rlox_dp_no_such_module", "no-such-sim>=1"),))
    with pytest.raises(ImportError, match=r"InvertedDoublePendulum-v5 expert needs no-such-sim>=1.*pip install"):
        load_or_train_sb3_expert(spec, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "experts").exists()


def test_collect_demonstrations_layout():
    demos = collect_demonstrations(
        BIMODAL_ENV_ID, BimodalPointExpert(0), n_episodes=5, seed=42, n_envs=2
    )
    lengths = demos.episode_lengths
    assert demos.n_episodes == 5 and demos.n_steps == lengths.sum()
    np.testing.assert_array_equal(demos.episode_ends, np.cumsum(lengths))
    np.testing.assert_array_equal(demos.episode_seeds, np.arange(42, 47))
    assert demos.observations["state"].shape == (demos.n_steps, 2)
    assert demos.actions.shape == (demos.n_steps, 2) and demos.actions.dtype == np.float32
    assert demos.rewards.shape == (demos.n_steps,)
    # each episode's first observation is the env's reset observation for its seed
    from rlox_dp.envs import make_env

    env = make_env(BIMODAL_ENV_ID)
    starts = np.concatenate([[0], demos.episode_ends[:-1]])
    for seed, start in zip(demos.episode_seeds, starts, strict=True):
        np.testing.assert_array_equal(demos.observations["state"][start],
                                      env.reset(seed=int(seed))[0]["state"])
    meta = demos.metadata
    assert meta["episode_returns"] == [1.0] * 5 and meta["return_mean"] == 1.0
    assert meta["success_rate"] == 1.0 and meta["dropped_seeds"] == []
    np.testing.assert_allclose(demos.rewards[demos.episode_ends - 1], 1.0)


def test_only_successful_keeps_successes():
    full = collect_demonstrations(BIMODAL_ENV_ID, SometimesExpert(0), n_episodes=12, n_envs=3)
    kept = collect_demonstrations(BIMODAL_ENV_ID, SometimesExpert(0), n_episodes=12, n_envs=3,
                                  only_successful=True)
    returns = np.array(full.metadata["episode_returns"])
    assert 0 < (returns == 1).sum() < 12
    np.testing.assert_array_equal(kept.episode_seeds, full.episode_seeds[returns == 1])
    assert kept.metadata["dropped_seeds"] == full.episode_seeds[returns != 1].tolist()
    assert kept.metadata["n_attempted"] == 12 and kept.metadata["success_rate"] < 1


def test_only_successful_errors():
    with pytest.raises(RuntimeError, match="none of the 2 episodes"):
        collect_demonstrations(BIMODAL_ENV_ID, ZeroPolicy(), n_episodes=2, only_successful=True)
    with pytest.raises(ValueError, match="never reported success"):
        collect_demonstrations("Pendulum-v1", ZeroPolicy(), n_episodes=1, only_successful=True)


def test_default_demonstrations_are_cached(tmp_path, monkeypatch):
    demos = default_demonstrations(BIMODAL_ENV_ID, n_episodes=4, cache_dir=tmp_path, progress=False)
    path = tmp_path / "demos" / f"rlox_dp_BimodalPoint-v0-{DEMOS_VERSION}-4-10000.npz"
    assert path.exists()
    assert demos.metadata["expert_return_mean"] == 1.0
    np.testing.assert_array_equal(demos.episode_seeds, np.arange(10_000, 10_004))

    def no_expert(*args, **kwargs):
        raise AssertionError("cached demonstrations must be reused")

    monkeypatch.setattr(demonstrations_module, "get_expert", no_expert)
    again = default_demonstrations(BIMODAL_ENV_ID, n_episodes=4, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.actions, demos.actions)
    np.testing.assert_array_equal(again.observations["state"], demos.observations["state"])
    assert again.metadata == demos.metadata


def test_default_demonstrations_with_noise_injection_have_their_own_cache(tmp_path, monkeypatch):
    clean = default_demonstrations(BIMODAL_ENV_ID, n_episodes=3, cache_dir=tmp_path, progress=False)
    monkeypatch.setitem(demonstrations_module.DEMO_ACTION_NOISE, BIMODAL_ENV_ID, 0.05)
    noisy = default_demonstrations(BIMODAL_ENV_ID, n_episodes=3, cache_dir=tmp_path, progress=False)
    assert (tmp_path / "demos" / f"rlox_dp_BimodalPoint-v0-{DEMOS_VERSION}-noise0.05-3-10000.npz").exists()
    assert noisy.metadata["action_noise"] == 0.05 and clean.metadata["action_noise"] == 0.0
    # same start states, perturbed trajectories
    np.testing.assert_array_equal(noisy.observations["state"][0], clean.observations["state"][0])
    assert not np.array_equal(noisy.observations["state"][:20], clean.observations["state"][:20])


@pytest.mark.slow
@pytest.mark.parametrize(("env_id", "target"), [("Pendulum-v1", -200.0),
                                                ("MountainCarContinuous-v0", 90.0),
                                                ("InvertedDoublePendulum-v5", 9_000.0)])
def test_trained_expert_reaches_target(env_id, target, tmp_path):
    if env_id in SB3_EXPERTS and SB3_EXPERTS[env_id].requires:
        for module, _ in SB3_EXPERTS[env_id].requires:
            pytest.importorskip(module)
    start = time.perf_counter()
    expert = get_expert(env_id, cache_dir=tmp_path, progress=False)
    train_s = time.perf_counter() - start
    result = evaluate_policy(expert, env_id, n_episodes=20, n_envs=4, seed=0)
    print(f"{env_id}: trained in {train_s:.0f} s, eval return {result.returns.mean():.1f}")
    assert result.returns.mean() > target
