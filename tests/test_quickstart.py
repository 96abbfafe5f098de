"""The documented one-liners run as written (with reduced step counts)."""

from __future__ import annotations

import math

import pytest

from rlox_dp import Trainer


@pytest.fixture
def cache(tmp_path_factory, monkeypatch):
    """Each CI run trains the Pendulum SAC expert once (about a minute) and reuses it."""
    import os

    if "RLOX_DP_CACHE" not in os.environ:
        monkeypatch.setenv("RLOX_DP_CACHE", str(tmp_path_factory.getbasetemp() / "rlox_dp_cache"))


def test_rlox_quick_start_runs_as_written(cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default log dir is ./runs
    # --- verbatim from rlox's docs (only the step count is reduced) ---
    trainer = Trainer("diffusion", env="Pendulum-v1", seed=42, config={
        "n_diffusion_steps": 50,
        "action_horizon": 8,
        "obs_horizon": 2,
        "noise_schedule": "cosine",
    })
    metrics = trainer.train(total_timesteps=1_000)
    print(f"Loss: {metrics['loss']:.4f}")
    # --- what it means ---
    cfg = trainer.config
    assert (cfg.num_train_timesteps, cfg.horizon, cfg.n_obs_steps, cfg.beta_schedule) == (50, 8, 2, "cosine")
    assert metrics["step"] == math.ceil(1_000 / cfg.batch_size)  # total_timesteps counts windows
    assert math.isfinite(metrics["loss"])
    assert metrics["expert/return_mean"] > -250  # trained on a real expert, not random actions
    assert math.isfinite(metrics["eval/return_mean"])
    assert (tmp_path / "runs").is_dir()
