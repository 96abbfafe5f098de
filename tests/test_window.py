"""``Window``: the one place that checks the observation/action window, and the U-Net's horizon rule."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, pendulum_demos

from rlox_dp import (
    ConfigError,
    DemonstrationBuffer,
    Trainer,
    Window,
    available_algorithms,
    get_algorithm_class,
)

BAD_WINDOWS = [
    (dict(n_obs_steps=0, horizon=4, n_action_steps=1), r"'n_obs_steps' must be >= 1, got 0"),
    (dict(n_obs_steps=2, horizon=0, n_action_steps=1), r"'horizon' must be >= 1, got 0"),
    (dict(n_obs_steps=3, horizon=2, n_action_steps=1), r"'horizon' must be >= n_obs_steps \(3\).*got 2"),
    (dict(n_obs_steps=2, horizon=4, n_action_steps=4), r"'n_action_steps' must be in \[1, .* = 3\].*got 4"),
    (dict(n_obs_steps=2, horizon=4, n_action_steps=0), r"'n_action_steps' must be in \[1, .* = 3\].*got 0"),
    (dict(n_obs_steps=2, horizon=4, n_action_steps=2, drop_n_last_frames=-1),
     r"'drop_n_last_frames' must be >= 0, got -1"),
    (dict(n_obs_steps=2.5, horizon=4), r"'n_obs_steps': expected an int, got 2.5"),
]


@pytest.mark.parametrize("values,match", BAD_WINDOWS)
def test_bad_windows_are_refused_naming_the_field(values, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Window(**values)


def test_defaults_and_aliases() -> None:
    assert Window() == Window(2, 16, 8, 0)  # the paper's T_o=2, H=16, n_a=8
    assert Window(n_obs_steps=2, horizon=8).n_action_steps == 4  # min(H // 2, H - T_o + 1)
    assert Window(n_obs_steps=4, horizon=5).n_action_steps == 2
    assert Window.from_dict({"obs_horizon": 3, "action_horizon": 6}) == Window(3, 6, 3)


@pytest.mark.parametrize("algorithm", available_algorithms())
def test_every_algorithm_config_checks_its_window_through_window(algorithm, monkeypatch) -> None:
    """A config's window errors are Window's: same message, raised from Window.validate."""
    cls = get_algorithm_class(algorithm).config_class
    with pytest.raises(ConfigError, match=r"'n_obs_steps' must be >= 1, got 0"):
        cls.from_dict({"n_obs_steps": 0})
    calls = []
    original = Window.validate

    def counting(self):
        calls.append((self.n_obs_steps, self.horizon, self.n_action_steps))
        return original(self)

    monkeypatch.setattr(Window, "validate", counting)
    config = cls.from_dict({})
    assert calls, f"{cls.__name__} did not check its window through Window"
    assert config.window == Window(config.n_obs_steps, config.horizon, config.n_action_steps,
                                   config.drop_n_last_frames)


def test_the_policy_config_window_is_handed_to_the_buffer() -> None:
    config = get_algorithm_class("bc_chunk").config_class.from_dict({"horizon": 8, "n_action_steps": 3})
    buffer = DemonstrationBuffer(pendulum_demos(n_episodes=2, length=20), config.window)
    assert buffer.window_spec == config.window
    assert buffer.window(torch.tensor([0])).action.shape == (1, 8, 1)


def test_unet_horizon_rule_is_the_unets_own() -> None:
    """``horizon % 2**(len(down_dims) - 1) == 0``: H=6 with two levels is allowed now (the old
    config rule asked for a multiple of 2**len(down_dims) = 4), H=6 with three levels is not."""
    cls = get_algorithm_class("diffusion").config_class
    assert cls.from_dict({"down_dims": (16, 32), "n_groups": 4, "horizon": 6}).horizon == 6
    with pytest.raises(ConfigError, match=r"'horizon' must be divisible by 2\*\*\(len\(down_dims\) - 1\) = 4"):
        cls.from_dict({"down_dims": (16, 32, 64), "n_groups": 4, "horizon": 6})


def test_a_horizon_the_old_rule_refused_trains(tmp_path) -> None:
    """End to end: a tiny two-level U-Net with H=6 (refused before: 6 % 2**2 != 0) trains a step."""
    config = {**TINY["diffusion"], "horizon": 6, "n_action_steps": 3}
    trainer = Trainer("diffusion", env="Pendulum-v1", config=config, demos=pendulum_demos(n_episodes=2),
                      seed=0, device="cpu", log_dir=tmp_path / "run", progress=False, preset=False)
    metrics = trainer.train(1, evaluate=False)
    assert metrics["step"] == 1.0 and torch.isfinite(torch.tensor(metrics["loss"]))
    window = {"state": torch.zeros(1, 2, 3)}
    assert trainer.eval_policy.predict_action_chunk(window).shape == (1, 3, 1)
