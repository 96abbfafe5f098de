"""Trainer end to end with tiny budgets: train, evaluate, save/load, resume, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY, pendulum_demos, record_losses

from rlox_dp import NonFiniteLossError, Trainer
from rlox_dp.checkpoint import load_checkpoint

ALGOS = ["diffusion", "bc", "bc_chunk"]


def make(algo: str, tmp_path, seed: int = 0, **overrides) -> Trainer:
    config = {**TINY[algo], **overrides}
    return Trainer(algo, env="Pendulum-v1", config=config, demos=pendulum_demos(), seed=seed,
                   device="cpu", log_dir=tmp_path / f"{algo}-{seed}", progress=False, preset=False)


@pytest.mark.parametrize("algo", ALGOS)
def test_train_evaluate_returns_metrics(algo, tmp_path):
    trainer = make(algo, tmp_path)
    metrics = trainer.train(10)
    assert metrics["step"] == 10
    assert np.isfinite(metrics["loss"])
    assert metrics["eval/n_episodes"] == 2
    assert np.isfinite(metrics["eval/return_mean"])
    assert (tmp_path / f"{algo}-0" / "checkpoints" / "last.safetensors").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / f"{algo}-0").iterdir())


@pytest.mark.parametrize("algo", ALGOS)
def test_save_load_round_trip_gives_same_actions(algo, tmp_path):
    trainer = make(algo, tmp_path)
    trainer.train(6, evaluate=False)
    path = trainer.save(tmp_path / "ckpt.safetensors")
    loaded = Trainer.load(path, device="cpu", progress=False)
    obs = {"state": np.random.default_rng(0).normal(size=(3, 2, 3)).astype(np.float32)}
    gen_a, gen_b = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = trainer.eval_policy.eval().predict_action_chunk(obs, gen_a)
    b = loaded.eval_policy.eval().predict_action_chunk(obs, gen_b)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert loaded.state.step == 6
    assert loaded.config == trainer.config and loaded.training == trainer.training


def test_resume_is_bit_identical_to_uninterrupted_run(tmp_path):
    full = make("diffusion", tmp_path / "full")
    full.train(12, evaluate=False)

    first = make("diffusion", tmp_path / "part")
    _train_until(first, 5, total=12)  # Ctrl-C after 5 of 12 steps
    path = first.log_dir / "checkpoints" / "last.safetensors"
    resumed = Trainer.load(path, demos=pendulum_demos(), device="cpu", progress=False,
                           log_dir=tmp_path / "resumed")
    resumed.train(12, evaluate=False)
    for (name, p_full), (_, p_res) in zip(full.policy.state_dict().items(),
                                          resumed.policy.state_dict().items(), strict=True):
        assert torch.equal(p_full, p_res), name
    for p_full, p_res in zip(full.ema.model.parameters(), resumed.ema.model.parameters(), strict=True):
        assert torch.equal(p_full, p_res)


def _train_until(trainer: Trainer, stop: int, total: int) -> None:
    """Run ``stop`` steps of a ``total``-step run (the LR schedule depends on the total)."""
    original = trainer.buffer.window
    calls = {"n": 0}

    def sample(*args, **kwargs):
        if calls["n"] == stop:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    trainer.buffer.window = sample
    metrics = trainer.train(total, evaluate=False)
    trainer.buffer.window = original
    assert metrics["interrupted"] == 1.0
    assert trainer.state.step == stop


def test_keyboard_interrupt_saves_checkpoint(tmp_path):
    trainer = make("bc", tmp_path)
    _train_until(trainer, 3, total=10)
    _, meta = load_checkpoint(trainer.log_dir / "checkpoints" / "last.safetensors")
    assert meta["step"] == 3


def test_same_seed_same_losses_and_eval_different_seed_differs(tmp_path):
    def run(seed):  # each run in its own directory (a used one is refused)
        t = make("diffusion", tmp_path / str(len(list(tmp_path.iterdir()))), seed=seed, log_every=1)
        losses = record_losses(t)
        metrics = t.train(6)
        return losses, metrics["eval/return_mean"]

    l1, r1 = run(3)
    l2, r2 = run(3)
    l3, _ = run(4)
    assert l1 == l2 and r1 == r2
    assert l1 != l3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = make("bc", tmp_path, checkpoint_every=2)
    trainer.train(4, evaluate=False)
    ckpt = trainer.log_dir / "checkpoints" / "last.safetensors"
    before = ckpt.read_bytes()
    orig = trainer.policy.compute_loss

    def nan_loss(batch, generator=None, **kwargs):
        loss, info = orig(batch, generator, **kwargs)
        return loss * float("nan"), info

    trainer.policy.compute_loss = nan_loss
    weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        trainer.train(8, evaluate=False)
    assert ckpt.read_bytes() == before
    for k, v in trainer.policy.state_dict().items():
        assert torch.equal(v, weights[k]), k


def test_total_timesteps_counts_windows(tmp_path):
    trainer = make("bc", tmp_path)
    metrics = trainer.train(total_timesteps=32 * 3 + 1, evaluate=False)
    assert metrics["step"] == 4
