"""The documented one-liners run as written (with reduced step counts).

The quick start trains the Pendulum SAC expert on first use (about a minute of CPU): that run is
a slow test; the default suite runs the same code path with an untrained stand-in expert placed
in the cache (demonstrations collected from it, training, evaluation), without the expert's
quality check.
"""

from __future__ import annotations

import math

import gymnasium as gym
import pytest

from rlox_dp import Trainer
from rlox_dp.experts.sb3 import SB3_EXPERTS, sb3_expert_path


def run_rlox_quick_start(tmp_path, monkeypatch) -> tuple[Trainer, dict[str, float]]:
    """rlox's quick start, verbatim but for the step count; returns the trainer and its metrics."""
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
    assert metrics["step"] == math.ceil(1_000 / trainer.training.batch_size)  # total_timesteps counts windows
    assert math.isfinite(metrics["loss"])
    assert math.isfinite(metrics["eval/return_mean"])
    assert (tmp_path / "runs").is_dir()
    return trainer, metrics


@pytest.mark.slow  # trains the Pendulum SAC expert (about a minute of CPU) unless RLOX_DP_CACHE has it
def test_rlox_quick_start_runs_as_written(tmp_path_factory, tmp_path, monkeypatch):
    import os

    if "RLOX_DP_CACHE" not in os.environ:
        monkeypatch.setenv("RLOX_DP_CACHE", str(tmp_path_factory.getbasetemp() / "rlox_dp_cache"))
    _, metrics = run_rlox_quick_start(tmp_path, monkeypatch)
    assert metrics["expert/return_mean"] > -250  # trained on a real expert, not random actions


def test_rlox_quick_start_with_a_stand_in_expert(tmp_path, monkeypatch):
    """The quick start's path (cached expert -> demonstrations -> training -> evaluation) with an
    untrained tiny SAC saved where the real expert is cached: nothing is trained but the policy."""
    from stable_baselines3 import SAC

    cache = tmp_path / "cache"  # never the shared RLOX_DP_CACHE: the stand-in must not leak
    monkeypatch.setenv("RLOX_DP_CACHE", str(cache))
    stand_in = SAC("MlpPolicy", gym.make("Pendulum-v1"), seed=0, device="cpu",
                   policy_kwargs={"net_arch": [8]})
    path = sb3_expert_path(SB3_EXPERTS["Pendulum-v1"], cache, seed=0)  # the expert of seed 0
    path.parent.mkdir(parents=True)
    stand_in.save(path)

    def no_training(*args, **kwargs):
        raise AssertionError("the cached stand-in expert must be used, not a new one trained")

    monkeypatch.setattr(SAC, "learn", no_training)
    (tmp_path / "work").mkdir()
    _, metrics = run_rlox_quick_start(tmp_path / "work", monkeypatch)
    assert math.isfinite(metrics["expert/return_mean"])
    assert list((cache / "demos").glob("*.npz"))  # demonstrations collected from the stand-in
