"""Checkpoint files: safetensors for tensors, JSON for everything else; atomic writes, no pickle.

A checkpoint is ONE ``.safetensors`` file. Its tensors are namespaced (``policy/...``,
``ema/...``, ``optimizer/state/<i>/<name>``, ``rng/<name>``) and its header metadata holds one
JSON document under the key ``"rlox_dp"`` (format version, algorithm, env, config, step, spaces,
normalizer layout, optimizer hyper-parameters). Loading parses the safetensors header and JSON only,
so a file can never execute code; anything else (a pickle, a truncated or corrupted file) is
refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

__all__ = [
    "space_from_json",
    "space_to_json",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointError",
    "atomic_write_bytes",
    "load_checkpoint",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "save_checkpoint",
]

FORMAT_NAME = "rlox_dp.checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, not ours, or incompatible with the request."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash mid-write leaves the previous file (if any) intact, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` (any device; copied to CPU) and JSON ``meta`` to ``path``."""
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {"rlox_dp": json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta})}
    atomic_write_bytes(path, st_save(cpu, metadata=header))


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing any code.

    Returns:
        ``(tensors, meta)``: CPU tensors by name and the JSON metadata.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a valid rlox_dp checkpoint (pickle, truncated, corrupted,
            another format or a newer version).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        raw = header.get("__metadata__", {}).get("rlox_dp")
        meta = json.loads(raw) if raw is not None else None
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{str(path)!r} is not a valid rlox_dp checkpoint (truncated, corrupted, or not a "
            f"safetensors file; pickled files are refused and never loaded): {err}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not an rlox_dp checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {meta.get('version')}; this rlox_dp reads "
            f"version {FORMAT_VERSION}"
        )
    return tensors, meta


def optimizer_state_to_tensors(state: dict[str, Any], prefix: str = "optimizer") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors and a JSON part (param groups, scalars)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}/state/{pid}/{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "optimizer"
) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_tensors`: a dict for ``optimizer.load_state_dict``."""
    state: dict[int, dict[str, Any]] = {}
    head = f"{prefix}/state/"
    for key, value in tensors.items():
        if key.startswith(head):
            pid, name = key[len(head) :].split("/", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def space_to_json(space: Any) -> dict[str, Any]:
    """A Box or Dict-of-Box gymnasium space as JSON (shape, dtype, bounds)."""
    import gymnasium as gym
    import numpy as np

    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(v) for k, v in space.spaces.items()}}
    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": np.dtype(space.dtype).name,
                "low": space.low.tolist(), "high": space.high.tolist()}
    raise CheckpointError(f"cannot store space {space} in a checkpoint (only Box and Dict of Box)")


def space_from_json(data: dict[str, Any]) -> Any:
    """Inverse of :func:`space_to_json`."""
    import gymnasium as gym
    import numpy as np

    if data.get("type") == "Dict":
        return gym.spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    if data.get("type") == "Box":
        dtype = np.dtype(data["dtype"])
        return gym.spaces.Box(np.asarray(data["low"], dtype=dtype), np.asarray(data["high"], dtype=dtype),
                              shape=tuple(data["shape"]), dtype=dtype)
    raise CheckpointError(f"unknown space description in checkpoint: {data.get('type')!r}")
