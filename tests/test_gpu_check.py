"""benchmarks/gpu_check.py: its CPU fallback in CI size (the GPU run itself needs a GPU machine)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import load_benchmark


def test_cpu_fallback_checks_losses_times_and_writes_json(tmp_path):
    torch.set_num_threads(1)
    check = load_benchmark("gpu_check")
    result = check.main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert saved["device"] == "cpu" and saved["quick"] is True
    loss = result["loss_check"]
    assert loss["ok"] and len(loss["cpu_float32"]) == 3
    assert loss["max_rel_diff_float32"] == 0.0  # the same device: bit-identical steps
    assert 0.0 < loss["max_rel_diff_bf16"] <= check.LOSS_RTOL_BF16  # bf16 differs, within tolerance
    assert set(result["training"]) == {"float32", "bf16"}
    assert all(v["steps_per_s"] > 0 and v["steps"] == 3 for v in result["training"].values())
    assert set(result["chunk_latency_s"]) == {"eager"}
    assert "skipped" in result["ddp"]


def test_loss_check_detects_a_different_model(tmp_path, monkeypatch):
    """A device whose steps differ from the CPU's fails the check (here: a perturbed weight)."""
    check = load_benchmark("gpu_check")
    real = check.loss_trajectory

    def perturbed(trainer, state, batches, device, bf16):
        if not bf16 and device.type == "cpu" and getattr(perturbed, "calls", 0) == 1:
            state = {k: v + 0.05 * torch.randn_like(v) if v.is_floating_point() else v
                     for k, v in state.items()}
        perturbed.calls = getattr(perturbed, "calls", 0) + 1
        return real(trainer, state, batches, device, bf16)

    monkeypatch.setattr(check, "loss_trajectory", perturbed)
    trainer = check.Trainer("diffusion", env=check.ENV, config=check.QUICK, demos=check.synthetic_demos(),
                            device="cpu", seed=0, log_dir=tmp_path / "r", progress=False, preset=False)
    assert not check.check_losses(trainer, torch.device("cpu"), n_steps=2)["ok"]


@pytest.mark.slow
def test_ddp_path_on_two_cpu_processes(tmp_path):
    result = load_benchmark("gpu_check").main(["--quick", "--device", "cpu", "--ddp", "--out", str(tmp_path)])
    assert result["ddp"]["ok"] and result["ddp"]["world_size"] == 2 and result["ddp"]["backend"] == "gloo"
