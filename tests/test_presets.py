"""Per-env presets: applied under the user's config, off with preset=False."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rlox_dp import Trainer
from rlox_dp.buffers import Demonstrations
from rlox_dp.presets import PRESETS, preset_for


def test_preset_lookup_returns_copies():
    preset = preset_for("diffusion", "InvertedDoublePendulum-v5")
    assert (preset["horizon"], preset["n_action_steps"]) == (4, 1)  # replan every step
    preset["horizon"] = 99
    assert PRESETS[("diffusion", "InvertedDoublePendulum-v5")]["horizon"] == 4
    assert preset_for("diffusion", "NoSuchEnv-v0") == {}


def idp_shaped_demos(n_episodes: int = 2, length: int = 30) -> Demonstrations:
    rng = np.random.default_rng(0)
    n = n_episodes * length
    return Demonstrations(observations={"state": rng.normal(size=(n, 9)).astype(np.float32)},
                          actions=rng.uniform(-1, 1, size=(n, 1)).astype(np.float32),
                          episode_ends=np.arange(length, n + 1, length))


def test_trainer_applies_the_preset_under_user_keys(tmp_path):
    pytest.importorskip("mujoco")
    pytest.importorskip("imageio")
    trainer = Trainer("diffusion", env="InvertedDoublePendulum-v5", demos=idp_shaped_demos(),
                      config={"hidden_dim": 32, "total_steps": 7}, device="cpu",
                      log_dir=tmp_path / "a", progress=False)
    cfg = trainer.config
    assert (cfg.denoiser, cfg.horizon, cfg.n_action_steps, cfg.noise_scheduler_type) == ("mlp", 4, 1, "DDIM")
    assert (cfg.hidden_dim, trainer.training.total_steps) == (32, 7)  # the user's keys win
    plain = Trainer("diffusion", env="InvertedDoublePendulum-v5", demos=idp_shaped_demos(),
                    config={"denoiser": "mlp", "hidden_dim": 32}, device="cpu",
                    log_dir=tmp_path / "b", progress=False, preset=False)
    assert (plain.config.horizon, plain.config.n_action_steps) == (16, 8)  # the paper's defaults


@pytest.mark.slow
def test_inverted_double_pendulum_diffusion_balances(tmp_path):
    """Expert (trained, ~4 min) -> noise-injected demos -> the diffusion preset balances 1,000 steps."""
    pytest.importorskip("mujoco")
    pytest.importorskip("imageio")
    trainer = Trainer("diffusion", env="InvertedDoublePendulum-v5", cache_dir=tmp_path / "cache",
                      config={"n_eval_episodes": 10, "n_eval_envs": 10}, device="cpu",
                      log_dir=tmp_path / "run", progress=False)
    metrics = trainer.train()
    assert metrics["expert/return_mean"] > 9_000
    assert metrics["eval/return_mean"] > 9_000


@pytest.mark.skipif(not os.environ.get("RLOX_DP_PUSHT_ZARR"), reason="set RLOX_DP_PUSHT_ZARR")
def test_pusht_preset_is_the_measured_small_unet(tmp_path):
    trainer = Trainer("diffusion", env="gym_pusht/PushT-v0", demos=os.environ["RLOX_DP_PUSHT_ZARR"],
                      config={"obs": "keypoints"}, device="cpu", log_dir=tmp_path, progress=False)
    cfg = trainer.config
    assert tuple(cfg.down_dims) == (32, 64, 128) and (cfg.horizon, cfg.n_action_steps) == (16, 8)
    assert sum(p.numel() for p in trainer.policy.parameters()) < 2_000_000
