"""Policy files: ``policy.save`` / ``load_policy`` round trip (same actions for the same seed), a
training checkpoint loads as a policy (EMA weights by default), no side effects, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TINY, pendulum_demos

from rlox_dp import CheckpointError, Trainer, load_policy
from rlox_dp.algorithms import BCPolicy, DiffusionPolicy
from rlox_dp.checkpoint import load_checkpoint

OBS = {"state": np.random.default_rng(0).normal(size=(5, 2, 3)).astype(np.float32)}  # (B, T_o, D)


@pytest.fixture(scope="module", params=["diffusion", "bc"])
def trainer(request, tmp_path_factory):
    config = dict(TINY[request.param])
    if request.param == "diffusion":
        config.update(denoiser="mlp", hidden_dim=32, n_layers=2)
    trainer = Trainer(request.param, env="Pendulum-v1", demos=pendulum_demos(), config=config,
                      device="cpu", log_dir=tmp_path_factory.mktemp("run") / "run", progress=False,
                      preset=False)
    trainer.train(15, evaluate=False)
    return trainer


def _chunk(policy, seed: int) -> torch.Tensor:
    return policy.predict_action_chunk(OBS, torch.Generator().manual_seed(seed))


def test_round_trip_gives_the_same_actions_for_the_same_seed(trainer, tmp_path):
    policy = trainer.eval_policy
    path = policy.save(tmp_path / "policy.safetensors", env=trainer.env_id)
    loaded = load_policy(path)
    assert type(loaded) is type(policy) and not loaded.training
    assert loaded.env_id == "Pendulum-v1" and loaded.config == policy.config
    for seed in (0, 1):
        torch.testing.assert_close(_chunk(loaded, seed), _chunk(policy, seed), rtol=0, atol=0)
    obs = OBS["state"][:, -1]
    policy.reset()
    for _ in range(4):  # predict: deterministic, with the receding-horizon queues
        np.testing.assert_array_equal(loaded.predict(obs)[0], policy.predict(obs)[0])
    tensors, meta = load_checkpoint(path)
    assert meta["kind"] == "policy" and all(k.startswith("policy/") for k in tensors)  # no optimizer


def test_trainer_save_policy_records_the_env(trainer, tmp_path):
    loaded = load_policy(trainer.save_policy(tmp_path / "policy.safetensors"))
    assert (loaded.env_id, loaded.env_kwargs) == (trainer.env_id, trainer.env_kwargs)
    torch.testing.assert_close(_chunk(loaded, 4), _chunk(trainer.eval_policy, 4), rtol=0, atol=0)
    assert (tmp_path / "policy.safetensors").stat().st_size < trainer.save(tmp_path / "c.safetensors").stat().st_size


def test_training_checkpoint_loads_as_a_policy_ema_by_default(trainer, tmp_path):
    path = trainer.save(tmp_path / "ckpt.safetensors")
    ema, raw = load_policy(path), load_policy(path, ema=False)
    torch.testing.assert_close(_chunk(ema, 3), _chunk(trainer.eval_policy, 3), rtol=0, atol=0)
    torch.testing.assert_close(_chunk(raw, 3), _chunk(trainer.policy.eval(), 3), rtol=0, atol=0)
    if trainer.ema is not None:  # the two weight sets really differ
        assert not torch.equal(_chunk(ema, 3), _chunk(raw, 3))
    assert ema.env_id == "Pendulum-v1"


def test_loading_keeps_the_global_rng_and_checks_the_class(trainer, tmp_path):
    path = trainer.eval_policy.save(tmp_path / "p.safetensors")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    policy = type(trainer.eval_policy).load(path)
    torch.testing.assert_close(torch.rand(3), expected)  # building the module drew nothing
    other = BCPolicy if isinstance(policy, DiffusionPolicy) else DiffusionPolicy
    with pytest.raises(TypeError, match="not a"):
        other.load(path)


def test_cli_evaluates_a_policy_file_and_trainer_load_refuses_it(trainer, tmp_path, capsys):
    from rlox_dp.cli import main

    path = trainer.save_policy(tmp_path / "policy.safetensors")
    assert main(["eval", str(path), "--episodes", "1", "--envs", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(policy file)" in out and "eval/return_mean" in out and "Pendulum-v1" in out
    with pytest.raises(CheckpointError, match="is a policy file"):
        Trainer.load(path)


def test_damaged_or_foreign_files_are_refused(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_policy(bad)
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "missing.safetensors")
