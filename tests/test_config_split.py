"""The policy config apart from the training config: the split, defaults, aliases, errors, and
checkpoints / policy files written before the split (``tests/data/old_headers``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from helpers import TINY, pendulum_demos

from rlox_dp import (
    BCChunkConfig,
    CheckpointError,
    ConfigError,
    DiffusionConfig,
    Trainer,
    TrainingConfig,
    available_algorithms,
    get_algorithm_class,
    load_policy,
)
from rlox_dp.checkpoint import load_checkpoint, save_checkpoint
from rlox_dp.training.config import build_configs

OLD = Path(__file__).resolve().parent / "data" / "old_headers"
BEFORE = json.loads((OLD / "before_split.json").read_text())
TRAINING_FIELDS = {f.name for f in dataclasses.fields(TrainingConfig)}


def _fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("algorithm", available_algorithms())
def test_every_field_lands_in_exactly_one_config(algorithm) -> None:
    policy = _fields(get_algorithm_class(algorithm).config_class)
    assert not policy & TRAINING_FIELDS, f"fields in both configs: {sorted(policy & TRAINING_FIELDS)}"
    if algorithm in BEFORE["config_fields"]:  # an algorithm registered before the split
        assert policy | TRAINING_FIELDS == set(BEFORE["config_fields"][algorithm])


@pytest.mark.parametrize("name", sorted(BEFORE["default_configs"]))
def test_every_default_a_user_got_before_the_split_is_kept(name) -> None:
    algorithm, _, denoiser = name.partition("+")
    policy, training = build_configs(get_algorithm_class(algorithm).config_class,
                                     {"denoiser": denoiser} if denoiser else {})
    got = json.loads(json.dumps({**policy.to_dict(), **training.to_dict()}))  # tuples as JSON lists
    assert got == BEFORE["default_configs"][name]


def test_a_flat_dict_with_aliases_of_both_kinds() -> None:
    policy, training = build_configs(DiffusionConfig, {
        "obs_horizon": 2, "action_horizon": 8, "n_diffusion_steps": 20, "noise_scheduler": "DDIM",  # policy
        "optimizer_lr": 3e-4, "optimizer_betas": [0.9, 0.99], "scheduler_warmup_steps": 3,  # training
        "grad_clip": 1.0, "batch_size": 8, "denoiser": "transformer"})
    assert (policy.n_obs_steps, policy.horizon, policy.num_train_timesteps) == (2, 8, 20)
    assert policy.noise_scheduler_type == "DDIM"
    assert (training.lr, training.adam_betas, training.lr_warmup_steps) == (3e-4, (0.9, 0.99), 3)
    assert (training.grad_clip_norm, training.batch_size) == (1.0, 8)
    assert training.weight_decay == 0.1  # unset: the transformer's default


@pytest.mark.parametrize("values,match", [
    ({"horizn": 8}, r"unknown config key 'horizn' for DiffusionConfig / TrainingConfig\. Did you mean 'horizon'"),
    ({"learning_rat": 1e-3}, r"unknown config key 'learning_rat'.*Did you mean 'learning_rate'"),
    ({"lr": 1e-3, "optimizer_lr": 1e-3}, r"'lr' given twice"),
    ({"n_obs_steps": 0}, r"'n_obs_steps' must be >= 1, got 0"),
    ({"batch_size": 0}, r"'batch_size' must be >= 1, got 0"),
])
def test_errors_name_the_key(values, match) -> None:
    with pytest.raises(ConfigError, match=match):
        build_configs(DiffusionConfig, values)


def test_training_given_apart_or_in_the_flat_dict_is_the_same(tmp_path) -> None:
    tiny, demos = TINY["bc_chunk"], pendulum_demos(n_episodes=2, length=20)
    kw = dict(env="Pendulum-v1", demos=demos, device="cpu", progress=False, preset=False)
    flat = Trainer("bc_chunk", config=tiny, log_dir=tmp_path / "a", **kw)
    policy, training = build_configs(BCChunkConfig, tiny)
    apart = Trainer("bc_chunk", config=policy, training=training, log_dir=tmp_path / "b", **kw)
    as_dict = Trainer("bc_chunk", config=policy, training=training.to_dict(), log_dir=tmp_path / "c", **kw)
    assert flat.config == apart.config == as_dict.config == policy
    assert flat.training == apart.training == as_dict.training == training
    assert (training.lr, training.use_ema) == (1e-3, False)  # BC's defaults
    with pytest.raises(ConfigError, match=r"\['batch_size'\] given twice"):
        Trainer("bc_chunk", config=tiny, training={"batch_size": 4}, log_dir=tmp_path / "d", **kw)
    with pytest.raises(ConfigError, match="set them in one place"):
        Trainer("bc_chunk", config=tiny, training=training, log_dir=tmp_path / "e", **kw)


def test_new_checkpoints_store_both_parts_and_policy_files_the_policy_only(tmp_path) -> None:
    trainer = Trainer("bc_chunk", env="Pendulum-v1", config={**TINY["bc_chunk"], "n_eval_episodes": 3},
                      demos=pendulum_demos(n_episodes=2, length=20), device="cpu", log_dir=tmp_path / "run",
                      progress=False, preset=False)
    trainer.train(1, evaluate=False)
    _, meta = load_checkpoint(trainer.save(tmp_path / "ckpt.safetensors"))
    assert meta["config"] == json.loads(json.dumps(trainer.config.to_dict()))
    assert meta["training"] == json.loads(json.dumps(trainer.training.to_dict()))
    _, meta = load_checkpoint(trainer.save_policy(tmp_path / "policy.safetensors"))
    assert set(meta["config"]) == _fields(BCChunkConfig) and "training" not in meta
    assert meta["evaluation"] == {"n_eval_episodes": 3, "n_eval_envs": 2, "eval_seed": 0}
    assert load_policy(tmp_path / "policy.safetensors").evaluation == meta["evaluation"]


OLD_CONFIG = {"hidden_dim": 8, "n_layers": 1, "horizon": 4, "n_action_steps": 2}
OLD_TRAINING = {"batch_size": 8, "use_ema": True, "lr_warmup_steps": 1, "n_eval_episodes": 3, "eval_seed": 5,
                "lr": 2e-3}


def test_a_checkpoint_written_before_the_split_loads_and_trains_on(tmp_path) -> None:
    trainer = Trainer.load(OLD / "old_trainer_bc_chunk.safetensors", demos=pendulum_demos(n_episodes=2, length=20),
                           device="cpu", log_dir=tmp_path / "resumed", progress=False)
    assert trainer.config == BCChunkConfig.from_dict(OLD_CONFIG)
    assert trainer.training == TrainingConfig.from_dict(OLD_TRAINING).resolved(trainer.config)
    assert trainer.state.step == 3
    metrics = trainer.train(4, evaluate=False)
    assert metrics["step"] == 4.0 and torch.isfinite(torch.tensor(metrics["loss"]))
    _, meta = load_checkpoint(trainer.save(tmp_path / "new.safetensors"))  # saved the new way
    assert "training" in meta and "lr" not in meta["config"]


def test_a_policy_file_written_before_the_split_acts_as_before() -> None:
    for name in ("old_policy_bc_chunk", "old_trainer_bc_chunk"):
        policy = load_policy(OLD / f"{name}.safetensors")
        assert policy.config == BCChunkConfig.from_dict(OLD_CONFIG)
        assert policy.evaluation == {"n_eval_episodes": 3, "n_eval_envs": 4, "eval_seed": 5}
    policy = load_policy(OLD / "old_policy_bc_chunk.safetensors")
    actions = policy.predict_action_chunk({"state": torch.zeros(1, 2, 3)}).flatten().tolist()
    assert actions == pytest.approx(BEFORE["old_policy_bc_chunk_zero_obs_actions"], rel=1e-6, abs=1e-7)


def test_a_header_that_cannot_be_split_is_refused(tmp_path) -> None:
    for name in ("old_trainer_bc_chunk", "old_policy_bc_chunk"):
        tensors, meta = load_checkpoint(OLD / f"{name}.safetensors")
        meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
        meta["config"] = {**meta["config"], "learning_rat": 1e-3}
        path = tmp_path / f"{name}.safetensors"
        save_checkpoint(path, tensors, meta)
        with pytest.raises(CheckpointError, match=r"unknown config key 'learning_rat'.*Did you mean 'learning_rate'"):
            load_policy(path)
        if name.startswith("old_trainer"):
            with pytest.raises(CheckpointError, match=r"invalid or incompatible header.*'learning_rat'"):
                Trainer.load(path, demos=pendulum_demos(n_episodes=2, length=20), log_dir=tmp_path / "x")
