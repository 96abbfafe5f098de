"""The algorithm registry, config validation and the action queue (the contract every registered
algorithm meets, from defaults to policy files, is tested in test_contracts.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import build

from rlox_dp import ConfigError, available_algorithms, get_algorithm_class
from rlox_dp.algorithms import Algorithm, DiffusionConfig, register_algorithm
from rlox_dp.training.config import build_configs


def test_registry_lists_builtin_algorithms():
    assert {"diffusion", "bc", "bc_chunk"} <= set(available_algorithms())


def test_register_rejects_duplicates_and_non_algorithms():
    with pytest.raises(ValueError, match="already registered"):
        register_algorithm("bc")(get_algorithm_class("diffusion"))
    with pytest.raises(TypeError, match="Algorithm subclass"):
        register_algorithm("thing")(object)


@pytest.mark.parametrize("name", ["diffusion", "bc", "bc_chunk"])
def test_state_dict_round_trip_is_exact(name):
    a, _ = build(name)
    b, _ = build(name)
    b.load_state_dict(a.state_dict())
    obs = {"state": torch.randn(4, 2, 3)}
    out_a = a.predict_action_chunk(obs, torch.Generator().manual_seed(3))
    out_b = b.predict_action_chunk(obs, torch.Generator().manual_seed(3))
    assert torch.equal(out_a, out_b)
    assert out_a.shape == (4, a.config.n_action_steps, 1)
    assert (out_a <= 2.0).all() and (out_a >= -2.0).all()


class _CountingPolicy:
    """Wraps predict_normalized_actions to count replans and return distinct actions."""

    def __init__(self, algo: Algorithm) -> None:
        self.calls: list[int] = []
        self.windows: list[torch.Tensor] = []

        def fake(obs, generator=None):
            self.calls.append(obs["state"].shape[0])
            self.windows.append(algo.normalizer.unnormalize("state", obs["state"]))
            b = obs["state"].shape[0]
            steps = torch.arange(algo.config.n_action_steps, dtype=torch.float32) / 10
            return steps.view(1, -1, 1).expand(b, -1, 1)

        algo.predict_normalized_actions = fake


def test_select_action_replans_every_n_action_steps_and_on_reset():
    algo, _ = build("diffusion", horizon=8, n_action_steps=4)
    spy = _CountingPolicy(algo)
    obs = lambda v: {"state": np.full((2, 3), v, np.float32)}  # noqa: E731
    acts = [algo.select_action(obs(i)) for i in range(4)]
    assert spy.calls == [2]
    # the first window replicates the first observation (edge padding, as in training)
    assert torch.equal(spy.windows[0][:, 0], spy.windows[0][:, 1])
    assert not np.allclose(acts[0], acts[1])  # queue advances through the chunk
    algo.select_action(obs(4))
    assert spy.calls == [2, 2]
    # window now holds the two most recent observations
    assert torch.allclose(spy.windows[1][:, 0], torch.tensor(3.0), atol=1e-5)
    assert torch.allclose(spy.windows[1][:, 1], torch.tensor(4.0), atol=1e-5)
    algo.reset(np.array([False, True]))
    algo.select_action(obs(9))
    assert spy.calls == [2, 2, 1]  # only the reset env replans
    assert torch.allclose(spy.windows[2], torch.tensor(9.0), atol=1e-5)  # its history restarts from the new obs
    algo.reset()
    algo.select_action(obs(0))
    assert spy.calls[-1] == 2


def test_rlox_aliases_map_to_fields():
    cfg, training = build_configs(DiffusionConfig, {
        "n_diffusion_steps": 50, "action_horizon": 8, "obs_horizon": 2, "noise_schedule": "cosine",
        "learning_rate": 3e-4, "n_inference_steps": 10, "hidden_dim": 64, "batch_size": 64})
    assert (cfg.num_train_timesteps, cfg.horizon, cfg.n_obs_steps) == (50, 8, 2)
    assert (cfg.beta_schedule, cfg.num_inference_steps, cfg.hidden_dim) == ("cosine", 10, 64)
    assert (training.lr, training.batch_size) == (3e-4, 64)
    assert cfg.n_action_steps == 4  # min(H // 2, H - T_o + 1)


def test_alias_and_field_together_is_an_error():
    with pytest.raises(ConfigError, match="given twice"):
        build_configs(DiffusionConfig, {"lr": 1e-3, "learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="given twice"):
        DiffusionConfig.from_dict({"horizon": 8, "action_horizon": 8})


def test_config_accepts_case_insensitive_choices_and_lists():
    cfg = DiffusionConfig.from_dict({"noise_scheduler_type": "ddim", "down_dims": [32, 64], "horizon": 8,
                                     "n_groups": 8})
    assert cfg.noise_scheduler_type == "DDIM" and cfg.down_dims == (32, 64)


def test_bc_rejects_chunk_settings():
    with pytest.raises(ConfigError, match="bc_chunk"):
        get_algorithm_class("bc").config_class.from_dict({"horizon": 16})
