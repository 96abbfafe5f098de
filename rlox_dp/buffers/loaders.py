"""Read and write :class:`Demonstrations`: zarr replay buffers and numpy archives.

Formats: ``.zarr`` (or any directory), the original Diffusion Policy replay-buffer layout
(:mod:`rlox_dp.buffers.zarr_store`), and ``.npz`` (:mod:`rlox_dp.buffers.npz_archive`).

Writes are atomic: the data goes to a temporary path next to the target, then is renamed.

Reads never return something other than what was written: a zarr array with missing chunks (which
zarr would silently read as its fill value), an undecodable chunk, a damaged archive or invalid
metadata raise a ValueError naming the store and the array.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from rlox_dp.buffers.demonstration_buffer import ACTION_KEY, validate_demonstrations
from rlox_dp.buffers.demonstrations import Demonstrations
from rlox_dp.buffers.npz_archive import load_npz, write_npz
from rlox_dp.buffers.zarr_store import load_zarr, write_zarr

__all__ = ["load_demonstrations", "save_demonstrations"]


def load_demonstrations(
    path: str | os.PathLike,
    *,
    obs_keys: Sequence[str] | None = None,
    action_key: str = ACTION_KEY,
    channels_last_keys: Sequence[str] = (),
    allow_missing_chunks: bool = False,
) -> Demonstrations:
    """Load demonstrations from a zarr replay buffer (directory / ``.zarr``) or a ``.npz``.

    Args:
        path: the store or archive.
        obs_keys: observation arrays to load (default: every array except the action); only
            these are read from disk (PushT's ``data/img`` is 2.8 GB as float32).
        action_key: name of the ``(N, D_act)`` action array.
        channels_last_keys: image keys stored as ``(N, H, W, C)`` pixels in 0..255 (the
            original Diffusion Policy zarr, e.g. PushT ``"img"``); they are returned as
            ``(N, C, H, W)`` uint8, converted chunk by chunk.
        allow_missing_chunks: zarr only: read absent chunks as the array's fill value (what zarr
            does) instead of refusing the store. Only for stores written with zarr 3's default
            ``write_empty_chunks=False``, where an absent chunk means "all fill value"; otherwise
            a lost chunk would silently become zeros.

    Returns:
        Validated :class:`Demonstrations` (observation arrays ``(N, ...)``, actions ``(N, D_act)``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        KeyError: a requested observation key is not in the store.
        ValueError: anything else that would not load exactly the data written (missing or
            undecodable zarr chunks, a damaged archive, invalid metadata, inconsistent shapes,
            NaN/inf), naming the store and the array.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no demonstrations at {str(path)!r}")
    channels_last = set(channels_last_keys)
    if isinstance(channels_last_keys, str) or (obs_keys is not None and not channels_last <= set(obs_keys)):
        raise ValueError(f"channels_last_keys must be a list of loaded obs keys, got {channels_last_keys!r}")
    if path.is_dir() or path.suffix == ".zarr":
        demos = load_zarr(path, obs_keys, action_key, channels_last, allow_missing_chunks)
    elif path.suffix == ".npz":
        demos = load_npz(path, obs_keys, action_key, channels_last)
    else:
        raise ValueError(f"unsupported demonstrations format {str(path)!r}: expected a .zarr directory or a .npz file")
    unknown = channels_last - set(demos.observations)
    if unknown:
        raise ValueError(f"channels_last_keys {sorted(unknown)} are not observation keys {sorted(demos.observations)}")
    validate_demonstrations(demos)
    return demos


def save_demonstrations(demos: Demonstrations, path: str | os.PathLike, *, overwrite: bool = False,
                        channels_last_keys: Sequence[str] = ()) -> Path:
    """Write ``demos`` to ``path`` (``.zarr`` zarr-v2 replay buffer or ``.npz``), atomically.

    Args:
        demos: validated before writing; the metadata must be JSON-serializable.
        path: target ending in ``.zarr`` or ``.npz``.
        overwrite: replace an existing target (otherwise FileExistsError).
        channels_last_keys: image keys to store as given in ``(N, H, W, C)`` (e.g. the human
            PushT layout's ``img``); any other channel-last image is refused. Load them back with
            ``load_demonstrations(..., channels_last_keys=...)``.

    Returns:
        The written path.
    """
    path = Path(path)
    if path.suffix not in (".zarr", ".npz"):
        raise ValueError(f"path must end in .zarr or .npz, got {str(path)!r}")
    if ACTION_KEY in demos.observations:
        raise ValueError(f"observation key {ACTION_KEY!r} clashes with the action array")
    validate_demonstrations(demos, channels_last_keys)
    try:
        json.dumps(demos.metadata)
    except TypeError as err:
        raise TypeError(f"demos.metadata must be JSON-serializable: {err}") from err
    if path.exists() and not overwrite:
        raise FileExistsError(f"{str(path)!r} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    old = path.with_name(f".{path.name}.old-{uuid.uuid4().hex}")
    try:
        (write_zarr if path.suffix == ".zarr" else write_npz)(demos, tmp)
        if path.is_dir():
            os.replace(path, old)  # a directory cannot be replaced by one rename
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists():
                os.replace(old, path)
            raise
    finally:
        for leftover in (tmp, old):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            elif leftover.exists():
                leftover.unlink()
    return path
