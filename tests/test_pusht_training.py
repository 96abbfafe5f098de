"""Trainer on PushT: the real human demonstrations (skipped when RLOX_DP_PUSHT_ZARR is unset) and\nthe scripted MPC expert's."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from rlox_dp import Trainer

ZARR = os.environ.get("RLOX_DP_PUSHT_ZARR")
needs_zarr = pytest.mark.skipif(not ZARR or not Path(ZARR).exists(),
                                reason="set RLOX_DP_PUSHT_ZARR to the PushT replay zarr")


@needs_zarr
@pytest.mark.parametrize("algo", ["diffusion", "bc"])
def test_pusht_keypoints_trains_and_evaluates(algo, tmp_path):
    config = {"obs": "keypoints", "batch_size": 16, "n_eval_episodes": 2, "n_eval_envs": 2,
              "lr_warmup_steps": 1, "log_every": 1}
    if algo == "diffusion":
        config.update(down_dims=[16, 32], n_groups=4, diffusion_step_embed_dim=16,
                      num_train_timesteps=10, horizon=16)
    trainer = Trainer(algo, env="gym_pusht/PushT-v0", demos=ZARR, config=config, device="cpu",
                      log_dir=tmp_path, progress=False)
    assert trainer.observation_space["state"].shape == (20,)
    assert trainer.buffer.normalizer.shape("state") == (20,)
    metrics = trainer.train(3)
    assert math.isfinite(metrics["loss"])
    assert metrics["eval/n_episodes"] == 2
    assert 0.0 <= metrics["eval/score_mean"] <= 1.0
    assert "eval/success_rate" in metrics


@pytest.mark.slow  # the MPC expert solves two episodes (about 10 s of CPU)
def test_pusht_without_demos_uses_the_mpc_expert(tmp_path):
    """No dataset: the scripted MPC expert generates (and caches) demonstrations."""
    config = {"obs": "keypoints", "n_demos": 2, "batch_size": 8, "hidden_dim": 16,
              "n_eval_episodes": 1, "n_eval_envs": 1, "lr_warmup_steps": 1}
    trainer = Trainer("bc", env="gym_pusht/PushT-v0", config=config, device="cpu",
                      log_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert trainer.buffer.normalizer.shape("state") == (20,)
    assert list((tmp_path / "cache" / "demos").glob("pusht-mpc-2-*.zarr"))
    metrics = trainer.train(2)
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["eval/score_mean"] <= 1.0


def test_pusht_without_demos_reuses_the_cached_mpc_demonstrations(tmp_path, monkeypatch):
    """No dataset, MPC demonstrations already in the cache (two short episodes written here):
    the Trainer loads them instead of running the expert."""
    from rlox_dp.experts.pusht import generate_pusht_dataset

    cached = tmp_path / "cache" / "demos" / "pusht-mpc-2-10000.zarr"  # n_demos=2, default seed
    generate_pusht_dataset(cached, n_episodes=2, seed=10_000, max_steps=6, only_successful=False,
                           progress=False)

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached demonstrations should be reused")

    monkeypatch.setattr("rlox_dp.experts.pusht.dataset.generate_pusht_dataset", fail)
    config = {"obs": "keypoints", "n_demos": 2, "batch_size": 8, "hidden_dim": 16,
              "n_eval_episodes": 1, "n_eval_envs": 1, "lr_warmup_steps": 1}
    trainer = Trainer("bc", env="gym_pusht/PushT-v0", config=config, device="cpu",
                      log_dir=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False)
    assert trainer.buffer.normalizer.shape("state") == (20,)
    metrics = trainer.train(2, evaluate=False)
    assert math.isfinite(metrics["loss"])
