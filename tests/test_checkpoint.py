"""Checkpoints: atomic writes, safe loading (no pickle), corruption and incompatibility errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from helpers import TINY, pendulum_demos

from rlox_dp import CheckpointError, Trainer
from rlox_dp.checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    trainer = Trainer("bc", env="Pendulum-v1", config=TINY["bc"], demos=pendulum_demos(),
                      device="cpu", log_dir=tmp / "run", progress=False, preset=False)
    trainer.train(3, evaluate=False)
    return trainer.save(tmp / "bc.safetensors")


class _Payload:
    """Unpickling this would create a marker file: the test proves loading never unpickles."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_checkpoint_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(pickle.dumps({"policy": _Payload(str(marker))}))
    with pytest.raises(CheckpointError, match="not a valid rlox_dp checkpoint"):
        Trainer.load(bad)
    torch.save({"x": _Payload(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_checkpoint_is_refused(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError):
            load_checkpoint(path)


def test_corrupted_header_is_refused(checkpoint, tmp_path):
    data = bytearray(checkpoint.read_bytes())
    data[10:20] = b"\xff" * 10
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_checkpoint_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        Trainer.load(tmp_path / "nope.safetensors")


def test_checkpoint_contains_everything_needed(checkpoint):
    tensors, meta = load_checkpoint(checkpoint)
    assert meta["algorithm"] == "bc" and meta["step"] == 3
    assert any(k.startswith("policy/normalizer") for k in tensors)
    assert any(k.startswith("optimizer/state/") for k in tensors)
    assert {"rng/data", "rng/model", "rng/torch_cpu"} <= set(tensors)
    assert meta["config"]["hidden_dim"] == 32
    assert "normalizer" in meta and "observation_space" in meta


def test_checkpoint_of_another_config_is_refused(checkpoint, tmp_path):
    tensors, meta = load_checkpoint(checkpoint)
    meta = {k: v for k, v in meta.items() if k not in ("format", "version")}
    meta["config"] = {**meta["config"], "hidden_dim": 64}  # weights no longer fit
    path = tmp_path / "mismatch.safetensors"
    save_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        Trainer.load(path)
    meta["algorithm"] = "diffusion"
    meta["config"] = {}
    save_checkpoint(path, tensors, meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        Trainer.load(path)


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_optimizer_state_round_trip():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = optimizer_state_to_tensors(opt.state_dict())
    restored = optimizer_state_from_tensors(tensors, meta)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(restored)
    for (k, a), (_, b) in zip(opt.state_dict()["state"][0].items(), opt2.state_dict()["state"][0].items(), strict=True):
        assert torch.equal(a, b), k
