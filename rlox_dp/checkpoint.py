"""Checkpoint files: safetensors for tensors, JSON for everything else; atomic writes, no pickle.

A checkpoint is ONE ``.safetensors`` file. Its tensors are namespaced (``policy/...``,
``ema/...``, ``optimizer/state/<i>/<name>``, ``rng/<name>``) and its header metadata holds one
JSON document under the key ``"rlox_dp"`` (format version, algorithm, env, policy config
``"config"`` and training config ``"training"`` (one flat ``"config"`` before the split), step,
spaces, normalizer layout, optimizer hyper-parameters). Loading parses the safetensors header and JSON only,
so a file can never execute code; anything else (a pickle, a truncated or corrupted file) is
refused with :class:`CheckpointError`.

Integrity (format version 2): the header also holds, under ``"rlox_dp_digest"``, SHA-256 digests
of the tensors (names, dtypes, shapes and bytes) and of the ``"rlox_dp"`` JSON text. Loading
recomputes both and refuses a mismatch (flipped bits, an edited header), so a damaged file never
acts silently. The digests detect accidents, not tampering (anyone can recompute them). Version 1
files (written before digests existed) still load, with a warning that they cannot be verified.

Writes are atomic (temporary file in the target's folder, fsync, rename) and respect the umask;
temporaries left behind by a killed process are removed at the next save of the same target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rlox_dp.runtime import HOSTNAME, process_alive

__all__ = [
    "space_from_json",
    "space_to_json",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CheckpointError",
    "atomic_write_bytes",
    "fsync_directory",
    "load_checkpoint",
    "remove_stale_temporaries",
    "read_checkpoint_header",
    "tensors_digest",
    "validate_trainer_header",
    "optimizer_state_from_tensors",
    "optimizer_state_to_tensors",
    "save_checkpoint",
]

FORMAT_NAME = "rlox_dp.checkpoint"
#: 2: digests of the tensors and of the JSON header, verified at load.
FORMAT_VERSION = 2
#: versions this rlox_dp reads; version 1 (no digests) loads unverified, with a warning.
READABLE_VERSIONS = (1, 2)
DIGEST_KEY = "rlox_dp_digest"
#: a temporary of another host (or of an older rlox_dp) this old is taken as abandoned.
STALE_TMP_AGE_S = 3600.0

logger = logging.getLogger("rlox_dp")
_HOST_TAG = re.sub(r"\W", "_", HOSTNAME)[:40]


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, not ours, or incompatible with the request."""


def _tmp_is_stale(tmp: Path, prefix: str) -> bool:
    """A temporary ``.<target>.<host>-<pid>-<hex>.tmp`` whose writer is gone (or an old one)."""
    match = re.fullmatch(r"(\w*)-(\d+)-[0-9a-f]{8}\.tmp", tmp.name[len(prefix):])
    if match and match.group(1) == _HOST_TAG:
        return int(match.group(2)) != os.getpid() and not process_alive(int(match.group(2)))
    try:  # another host's, or an older rlox_dp's (mkstemp names): judged by age
        return time.time() - tmp.stat().st_mtime > STALE_TMP_AGE_S
    except FileNotFoundError:
        return False


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete temporaries of ``path`` left by killed writers (see :func:`atomic_write_bytes`).

    Returns:
        The removed paths. A temporary of a live process on this host is never touched.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    if not path.parent.is_dir():
        return removed
    for tmp in path.parent.iterdir():
        if tmp.name.startswith(prefix) and tmp.name.endswith(".tmp") and _tmp_is_stale(tmp, prefix):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    if removed:
        logger.info("removed %d stale temporary file(s) of %s left by an interrupted save",
                    len(removed), path)
    return removed


def fsync_directory(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename in it) to disk; a no-op where unsupported (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename.

    A crash mid-write leaves the previous file (if any) intact, never a truncated one. The file
    gets the mode a plain ``open(path, "wb")`` would (0666 minus the umask). Temporaries are named
    ``.<name>.<host>-<pid>-<hex>.tmp``; those of dead processes are removed first.

    Raises:
        IsADirectoryError: ``path`` is an existing folder (or empty).
    """
    path = Path(path)
    if str(path) in ("", ".") or path.is_dir():
        raise IsADirectoryError(f"cannot write a file at {str(path)!r}: it is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def _sha256_text(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order (CPU tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode("utf-8"))
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomically write ``tensors`` (any device; copied to CPU) and JSON ``meta`` to ``path``,
    with the digests :func:`load_checkpoint` verifies."""
    cpu = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    text = json.dumps({**meta, "format": FORMAT_NAME, "version": FORMAT_VERSION})
    digest = {"tensors": tensors_digest(cpu), "meta": _sha256_text(text)}
    header = {"rlox_dp": text, DIGEST_KEY: json.dumps(digest)}
    atomic_write_bytes(path, st_save(cpu, metadata=header))


def _parse_header(path: Path, data: bytes) -> tuple[dict[str, Any], str | None, str | None]:
    """``(safetensors header, "rlox_dp" JSON text, digest JSON text)`` of a checkpoint's bytes."""
    header_len = int.from_bytes(data[:8], "little")
    if len(data) < 8 or header_len > len(data) - 8:
        raise ValueError(f"header length {header_len} exceeds the file size {len(data)}")
    header = json.loads(data[8 : 8 + header_len])
    if not isinstance(header, dict):
        raise ValueError("the safetensors header is not a JSON object")
    metadata = header.get("__metadata__") or {}
    return header, metadata.get("rlox_dp"), metadata.get(DIGEST_KEY)


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a checkpoint, read from its header only (no tensors, not verified).

    Cheap even for multi-GB files: used to find a run's newest step. Raises
    :class:`CheckpointError` when the header is not an rlox_dp one.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
        size = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < size <= 100 * 2**20:
            raise CheckpointError(f"{str(path)!r} is not a valid rlox_dp checkpoint (bad header length)")
        data = head + f.read(size)
    try:
        _, text, _ = _parse_header(path, data)
        meta = json.loads(text) if text is not None else None
    except (ValueError, UnicodeDecodeError, TypeError) as err:
        raise CheckpointError(f"{str(path)!r} is not a valid rlox_dp checkpoint: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not an rlox_dp checkpoint")
    return meta


def load_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` without executing any code.

    Returns:
        ``(tensors, meta)``: CPU tensors by name and the JSON metadata.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a valid rlox_dp checkpoint (pickle, truncated, corrupted,
            another format or a newer version) or fails its integrity check (tensors or JSON
            header differ from their digests).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist or is not a file")
    data = path.read_bytes()
    try:
        tensors = st_load(data)
        _, text, digest_text = _parse_header(path, data)
        meta = json.loads(text) if text is not None else None
        digest = json.loads(digest_text) if digest_text is not None else None
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError, TypeError) as err:
        raise CheckpointError(
            f"{str(path)!r} is not a valid rlox_dp checkpoint (truncated, corrupted, or not a "
            f"safetensors file; pickled files are refused and never loaded): {err}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{str(path)!r} is a safetensors file but not an rlox_dp checkpoint")
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{str(path)!r} has checkpoint format version {meta.get('version')}; this rlox_dp reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if meta["version"] == 1:
        logger.warning("%s was written by an older rlox_dp without integrity digests: it is loaded "
                       "unverified (save it again to add them)", path)
        return tensors, meta
    _verify_digests(path, tensors, text, digest)
    return tensors, meta


def _verify_digests(path: Path, tensors: dict[str, torch.Tensor], text: str, digest: Any) -> None:
    """Refuse a version-2 checkpoint whose tensors or JSON header differ from their digests."""
    if not isinstance(digest, dict) or not {"tensors", "meta"} <= set(digest):
        raise CheckpointError(
            f"{str(path)!r} is a version-{FORMAT_VERSION} checkpoint without its integrity digests "
            f"({DIGEST_KEY!r} header entry missing or malformed): refusing to load it unverified"
        )
    if digest["meta"] != _sha256_text(text):
        raise CheckpointError(
            f"{str(path)!r} failed its integrity check: the JSON header (config, step, spaces ...) "
            "differs from its digest, so it was edited or corrupted after it was written"
        )
    if digest["tensors"] != tensors_digest(tensors):
        raise CheckpointError(
            f"{str(path)!r} failed its integrity check: the tensor data (weights, optimizer, RNG "
            "states) or their dtypes/shapes differ from the digest, so the file is corrupted"
        )


#: header fields of a Trainer checkpoint: name -> (JSON type, required).
_TRAINER_HEADER = {
    "algorithm": (str, True), "env": (str, True), "seed": (int, True), "step": (int, True),
    "config": (dict, True), "training": (dict, False), "normalizer": (dict, True), "optimizer": (dict, True),
    "observation_space": (dict, True), "action_space": (dict, True), "env_kwargs": (dict, False),
    "ema_step": (int, False), "demos": (str, False), "demo_info": (dict, False),
    "log_dir": (str, False), "grad_scaler": (dict, False), "run_id": (str, False),
}


def validate_trainer_header(meta: dict[str, Any], path: str | os.PathLike) -> None:
    """Check the fields :meth:`rlox_dp.Trainer.load` reads: present, of the right JSON type,
    counts non-negative, spaces parseable.

    Raises:
        CheckpointError: naming the checkpoint and the field.
    """
    for name, (kind, required) in _TRAINER_HEADER.items():
        value = meta.get(name)
        if value is None:
            if required:
                raise CheckpointError(f"checkpoint {str(path)!r} has no {name!r} in its header")
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(
                f"checkpoint {str(path)!r}: header field {name!r} must be a {kind.__name__}, got {value!r:.60}"
            )
        if kind is int and value < 0:
            raise CheckpointError(f"checkpoint {str(path)!r}: header field {name!r} must be >= 0, got {value}")
    if not isinstance(meta["optimizer"].get("param_groups"), list):
        raise CheckpointError(f"checkpoint {str(path)!r}: header field 'optimizer' has no 'param_groups' list")
    for name in ("observation_space", "action_space"):
        try:
            space_from_json(meta[name])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"checkpoint {str(path)!r}: header field {name!r} is not a valid space: "
                                  f"{err}") from None


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

    if not isinstance(data, dict):
        raise CheckpointError(f"a space description must be a JSON object, got {data!r:.60}")
    if data.get("type") == "Dict":
        return gym.spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    if data.get("type") == "Box":
        dtype = np.dtype(data["dtype"])
        return gym.spaces.Box(np.asarray(data["low"], dtype=dtype), np.asarray(data["high"], dtype=dtype),
                              shape=tuple(data["shape"]), dtype=dtype)
    raise CheckpointError(f"unknown space description in checkpoint: {data.get('type')!r}")
