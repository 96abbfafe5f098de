"""Speed options of the trainer: mixed precision, buffer placement, compile mode, eval history."""

from __future__ import annotations

import math
import time

import pytest
import torch
from helpers import TINY, record_losses

from rlox_dp import Trainer
from rlox_dp.config import ConfigError


def make(tmp_path, demos, **changes) -> Trainer:
    config = {**TINY["diffusion"], **changes}
    return Trainer("diffusion", env="Pendulum-v1", demos=demos, config=config, seed=0, device="cpu",
                   log_dir=tmp_path / "run", progress=False, preset=False)


def test_bf16_autocast_trains_close_to_float32(tmp_path, demos):
    fp32 = make(tmp_path / "a", demos)
    bf16 = make(tmp_path / "b", demos, mixed_precision="bf16")
    losses32, losses16 = record_losses(fp32), record_losses(bf16)
    fp32.train(3, evaluate=False)
    metrics = bf16.train(3, evaluate=False)
    assert math.isfinite(metrics["loss"])
    # the same batch and noise at step 0: bf16 (8-bit mantissa) changes the loss by well under 5 %
    assert losses16[0] == pytest.approx(losses32[0], rel=0.05)
    assert losses16[0] != losses32[0]  # autocast really ran in bfloat16
    # weights, optimizer state and EMA stay float32
    assert all(p.dtype == torch.float32 for p in bf16.policy.parameters())
    assert all(p.dtype == torch.float32 for p in bf16.eval_policy.parameters())


def test_fp16_needs_cuda(tmp_path, demos):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="mixed_precision.*fp16.*CUDA.*bf16"):
        make(tmp_path, demos, mixed_precision="fp16")


def test_invalid_speed_options_are_named(tmp_path, demos):
    with pytest.raises(ConfigError, match="mixed_precision"):
        make(tmp_path, demos, mixed_precision="int8")
    with pytest.raises(ConfigError, match="compile_mode"):
        make(tmp_path, demos, compile_mode="fastest")
    with pytest.raises(ConfigError, match="buffer_device"):
        make(tmp_path, demos, buffer_device="disk")


def test_host_buffer_gives_the_same_training(tmp_path, demos):
    """buffer_device="cpu" keeps windows in host memory; the steps taken are the same."""
    on_device = make(tmp_path / "a", demos)
    on_host = make(tmp_path / "b", demos, buffer_device="cpu")
    assert on_host.buffer.device == torch.device("cpu")
    la, lb = record_losses(on_device), record_losses(on_host)
    on_device.train(4, evaluate=False)
    on_host.train(4, evaluate=False)
    assert la == lb


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_host_buffer_pinned_and_fp16(tmp_path, demos):
    trainer = Trainer("diffusion", env="Pendulum-v1", demos=demos, seed=0, device="cuda",
                      config={**TINY["diffusion"], "buffer_device": "cpu", "mixed_precision": "fp16"},
                      log_dir=tmp_path / "run", progress=False, preset=False)
    assert trainer.buffer.device == torch.device("cpu")
    batch = trainer.buffer.window(torch.arange(4)).pin_memory()
    assert batch.action.is_pinned()
    metrics = trainer.train(5, evaluate=False)
    assert math.isfinite(metrics["loss"])
    path = trainer.save(tmp_path / "ckpt.safetensors")
    resumed = Trainer.load(path, demos=demos, device="cuda", progress=False)
    assert resumed.train_step.scaler.get_scale() == trainer.train_step.scaler.get_scale()


def test_eval_history_records_periodic_evaluations(tmp_path, demos):
    trainer = make(tmp_path, demos, eval_every=2)
    metrics = trainer.train(4)
    assert [e["step"] for e in trainer.eval_history] == [2.0, 4.0]
    assert trainer.eval_history[-1]["eval/return_mean"] == metrics["eval/return_mean"]
    assert all(e["eval/time_s"] > 0 for e in trainer.eval_history)


def test_in_loop_evaluation_is_not_training_time(tmp_path, demos):
    trainer = make(tmp_path, demos, eval_every=2, n_eval_episodes=4)
    assert len(trainer.buffer) > 0  # built outside the timed call
    start = time.perf_counter()
    metrics = trainer.train(3, evaluate=False)
    wall = time.perf_counter() - start
    (evaluation,) = trainer.eval_history
    assert metrics["train_time_s"] <= wall - evaluation["eval/time_s"]
