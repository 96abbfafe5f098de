"""EnvSpec: a user's env registered in one call trains through the Trainer; built-in specs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

from rlox_dp import Trainer
from rlox_dp.buffers import Demonstrations
from rlox_dp.config import ConfigError
from rlox_dp.envs import ENV_REGISTRY, EnvSpec, available_envs, env_spec, make_env, register_env
from rlox_dp.experts import get_expert
from rlox_dp.experts import registry as expert_registry
from rlox_dp.presets import OBS_MODE_PRESETS, PRESETS, preset_for
from rlox_dp.registry import Registry

REACH = "tests/Reach-v0"


class ReachEnv(gym.Env):
    """A point in the plane that should reach the origin; ``obs_mode`` "xy" or "polar"."""

    def __init__(self, render_mode: str | None = None, obs_mode: str = "xy") -> None:
        self.obs_mode = obs_mode
        self.observation_space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._pos = np.zeros(2)

    def _obs(self) -> np.ndarray:
        if self.obs_mode == "polar":
            return np.array([np.hypot(*self._pos), np.arctan2(self._pos[1], self._pos[0])], np.float32)
        return self._pos.astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1.0, 1.0, 2)
        return self._obs(), {}

    def step(self, action):
        self._pos = np.clip(self._pos + 0.2 * np.asarray(action, dtype=np.float64), -2.0, 2.0)
        distance = float(np.hypot(*self._pos))
        return self._obs(), -distance, distance < 0.05, False, {}


def make_reach(render_mode: str | None = None, max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    return gym.wrappers.TimeLimit(ReachEnv(render_mode, **kwargs), max_episode_steps or 20)


class ReachExpert:
    """Moves straight to the origin (an :class:`~rlox_dp.evaluation.EvalPolicy`, "xy" mode)."""

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        pass

    def select_action(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.clip(-5.0 * obs["state"], -1.0, 1.0).astype(np.float32)


def reach_expert(cache_dir: Path, progress: bool, seed: int) -> ReachExpert:
    return ReachExpert()


def load_reach_demos(path: Path, obs_mode: str | None, obs_keys: list[str]) -> Demonstrations:
    """The user's own file format: one ``.npy`` array of rows ``(episode, x, y, ax, ay)``."""
    rows = np.load(path)
    ends = np.flatnonzero(np.diff(rows[:, 0], append=np.inf)) + 1
    return Demonstrations(observations={"state": rows[:, 1:3].astype(np.float32)},
                          actions=rows[:, 3:5].astype(np.float32), episode_ends=ends)


@pytest.fixture
def isolated_registries(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Registrations made by a test are undone after it (env specs and experts)."""
    monkeypatch.setattr(ENV_REGISTRY, "_entries", dict(ENV_REGISTRY._entries))
    for name in dir(expert_registry):
        store = getattr(expert_registry, name)
        if isinstance(store, Registry):
            monkeypatch.setattr(store, "_entries", dict(store._entries))
        elif name == "_EXPERTS":
            monkeypatch.setattr(expert_registry, name, dict(store))
    yield


def reach_spec() -> EnvSpec:
    return EnvSpec(REACH, make=make_reach, obs_modes=("xy", "polar"), load_demos=load_reach_demos,
                   expert=reach_expert, presets={"bc": {"hidden_dim": 16, "n_layers": 1}})


def episodes(trainer: Trainer) -> int:
    """Episodes the trainer's buffer holds windows of."""
    return int(trainer.buffer.episode_of_window.max()) + 1


TRAIN = {"batch_size": 8, "total_steps": 2, "log_every": 1, "n_demos": 3, "eval_every": 0}


def test_a_registered_env_trains_from_its_expert_and_from_its_own_files(tmp_path, isolated_registries):
    spec = register_env(reach_spec())
    assert register_env(spec) is spec  # the same spec again: nothing happens
    assert REACH in available_envs() and env_spec("TESTS/reach-v0") is spec
    assert isinstance(get_expert(REACH), ReachExpert)  # the spec's expert is registered
    # demos=None: collected with the spec's expert through the spec's make
    trainer = Trainer("bc", env=REACH, config=TRAIN, device="cpu", log_dir=tmp_path / "a",
                      cache_dir=tmp_path / "cache", progress=False)
    assert (trainer.config.hidden_dim, trainer.config.n_layers) == (16, 1)  # the spec's preset
    assert episodes(trainer) == 3
    metrics = trainer.train(evaluate=False)
    assert trainer.state.step == 2 and np.isfinite(metrics["loss"])
    # demos=path: read by the spec's loader; the obs mode goes to the env
    rows = np.array([[e, 0.1 * t, -0.1 * t, -0.5, 0.5] for e in range(2) for t in range(12)])
    np.save(tmp_path / "reach.npy", rows)
    trainer = Trainer("bc", env=REACH, demos=tmp_path / "reach.npy", config={**TRAIN, "obs": "polar"},
                      device="cpu", log_dir=tmp_path / "b", progress=False)
    assert trainer.env_kwargs == {"obs_mode": "polar"} and episodes(trainer) == 2
    trainer.train(evaluate=False)
    assert trainer.state.step == 2


def test_registration_refuses_clashes_and_bad_specs(isolated_registries):
    register_env(reach_spec())
    with pytest.raises(ValueError, match="already registered"):
        register_env(reach_spec())  # another spec object under the same id (any case)
    with pytest.raises(ValueError, match="already registered"):
        register_env(EnvSpec(REACH.upper()))
    with pytest.raises(ValueError, match="different expert"):  # SAC's is registered: nothing changes
        register_env(EnvSpec("MountainCarContinuous-v0", expert=reach_expert))
    assert "MountainCarContinuous-v0" not in ENV_REGISTRY
    with pytest.raises(TypeError, match="EnvSpec"):
        register_env({"env_id": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="video_obs_mode"):
        EnvSpec("x", obs_modes=("a",), video_obs_mode="b")
    with pytest.raises(ValueError, match="obs_mode_presets"):
        EnvSpec("x", obs_modes=("a",), obs_mode_presets={"b": {}})
    with pytest.raises(TypeError, match="load_demos"):
        EnvSpec("x", load_demos="loader.py")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dataset_columns"):
        EnvSpec("x", dataset_columns={"state": 0})  # type: ignore[arg-type]


def test_dataset_columns_store_recorded_steps_in_the_loaders_layout(tmp_path):
    """Without ``dataset_columns`` the observations are stored as seen; PushT's are the human
    dataset's columns, which its loader turns back into the observations the policy saw."""
    from rlox_dp.buffers.loaders import save_demonstrations
    from rlox_dp.envs.pusht import make_pusht_env
    from rlox_dp.experts.labelling import get_labeller

    seen = {"obs": np.arange(6.0).reshape(3, 2)}
    assert EnvSpec("x").dataset_observations(np.zeros((3, 4)), seen) == seen

    spec = env_spec("gym_pusht/PushT-v0")
    labeller = get_labeller("gym_pusht/PushT-v0", 4, env_kwargs={"obs_mode": "keypoints"})
    env = make_pusht_env(obs_mode="keypoints")
    sim, obs = [], []
    o, _ = env.reset(seed=3)
    for _ in range(5):
        sim.append(labeller.capture(env))
        obs.append(o)
        o, *_ = env.step(env.action_space.sample())
    env.close()
    seen = {k: np.stack([x[k] for x in obs]) for k in obs[0]} if isinstance(obs[0], dict) else {"obs": np.stack(obs)}
    columns = spec.dataset_observations(np.stack(sim), seen)
    assert set(columns) == {"state", "keypoint"} and columns["state"].shape == (5, 5)
    demos = Demonstrations(observations=columns, actions=np.zeros((5, 2), np.float32),
                           episode_ends=np.array([5]), metadata={})
    save_demonstrations(demos, tmp_path / "d.zarr")
    loaded = spec.load_demonstrations(tmp_path / "d.zarr", "keypoints", ["obs"])
    (key,) = loaded.observations
    np.testing.assert_allclose(loaded.observations[key], next(iter(seen.values())), atol=1e-4)


def test_observation_mode_keys():
    spec = env_spec("gym_pusht/PushT-v0")
    assert spec.obs_modes[0] == "keypoints" and set(spec.obs_modes) == {"keypoints", "state", "image"}
    config = {"obs": "image", "lr": 1e-3}
    assert spec.pop_env_config(config) == {"obs_mode": "image"} and config == {"lr": 1e-3}
    with pytest.raises(ConfigError, match=r"'obs'.*'keypoints'.*got 'keypoint'.*Did you mean 'keypoints'"):
        spec.pop_env_config({"obs": "keypoint"})
    with pytest.raises(ConfigError, match="given twice"):
        spec.pop_env_config({"obs": "image", "obs_mode": "state"})
    with pytest.raises(ConfigError, match=r"config key 'obs_mode'.*only applies.*PushT.*'Pendulum-v1'"):
        env_spec("Pendulum-v1").pop_env_config({"obs_mode": "image"})
    assert spec.obs_mode({}) == "keypoints" and env_spec("Pendulum-v1").obs_mode({"obs_mode": "x"}) is None


def test_envs_without_a_spec_are_generic_and_presets_come_from_the_specs():
    generic = env_spec("MountainCarContinuous-v0")
    assert generic == EnvSpec("MountainCarContinuous-v0") and generic.preset("diffusion") == {}
    env = make_env("MountainCarContinuous-v0")
    assert isinstance(env.observation_space, gym.spaces.Dict)
    env.close()
    assert preset_for("DIFFUSION", "Pendulum-v1") == PRESETS[("diffusion", "Pendulum-v1")]
    assert OBS_MODE_PRESETS[("diffusion", "gym_pusht/PushT-v0", "image")] == preset_for(
        "diffusion", "gym_pusht/PushT-v0", "image")
    assert {env_id for _, env_id in PRESETS} == {
        s.env_id for _, s in ENV_REGISTRY.items() if s.presets}
    with pytest.raises(ValueError, match=r"unknown environment id 'gym_pusht/PushT-v1'.*PushT-v0"):
        make_env("gym_pusht/PushT-v1")  # exact ids: no family match, a suggestion instead
