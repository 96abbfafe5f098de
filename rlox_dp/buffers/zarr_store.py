"""Demonstrations as a zarr replay buffer: the original Diffusion Policy layout, zarr format v2.

``data/<key>`` arrays with first dim N (observations and the action), ``meta/episode_ends``
``(E,)``. This library also writes ``meta/reward`` ``(N,)``, ``meta/episode_seeds`` ``(E,)`` and
the root attributes ``"metadata"`` (the dict) and ``"obs_keys"`` (their order; other stores load
in sorted order); the original repo ignores them. Every chunk is written, and a store with a
missing chunk (which zarr would silently read as its fill value) is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rlox_dp.buffers.demonstration_buffer import ACTION_KEY
from rlox_dp.buffers.demonstrations import Demonstrations
from rlox_dp.buffers.reading import read_array, read_or_raise, select_obs_keys

__all__ = ["load_zarr", "write_zarr"]

_ZARR_MAJOR = int(zarr.__version__.split(".")[0])
_CHUNK_BYTES = 4 * 2**20  # target size of one zarr chunk along the step axis


def _zarr_array(group: Any, name: str, label: str, where: str, allow_missing_chunks: bool) -> Any:
    """``group[name]`` as a complete zarr array: every chunk present (unless allowed).

    zarr reads an absent chunk as the array's fill value, so a deleted or never-written chunk
    would silently become zeros in the training data.
    """
    arr = group[name]
    if not isinstance(arr, zarr.Array):
        raise ValueError(f"{where}{label!r} is a group, not an array")
    missing = arr.nchunks - arr.nchunks_initialized
    if missing and not allow_missing_chunks:
        raise ValueError(
            f"{where}array {label!r} is incomplete: {missing} of its {arr.nchunks} chunks are missing "
            f"(zarr would read them as the fill value {arr.fill_value!r}). Restore the chunk files; if "
            "the store was written with write_empty_chunks=False (zarr 3's default skips chunks that "
            "equal the fill value), rewrite it with write_empty_chunks=True or load it with "
            "allow_missing_chunks=True"
        )
    return arr


def _open_zarr(path: Path) -> Any:
    try:
        return zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{str(path)!r} is not a zarr store (no .zgroup / zarr.json group metadata): "
            f"{type(err).__name__}: {err}. Demonstrations are a .zarr replay buffer or a .npz archive"
        ) from None


def load_zarr(path: Path, obs_keys: Sequence[str] | None, action_key: str,
              channels_last: set[str], allow_missing_chunks: bool = False) -> Demonstrations:
    """Read the store at ``path`` (unvalidated; see :func:`~rlox_dp.buffers.loaders.load_demonstrations`)."""
    root = _open_zarr(path)
    where = f"zarr store {str(path)!r}: "
    for name in ("data", "meta/episode_ends"):
        if name not in root:
            raise ValueError(f"zarr store {str(path)!r} has no {name!r} (replay-buffer layout "
                             "needs data/<key> arrays and meta/episode_ends)")
    data = root["data"]
    if not isinstance(data, zarr.Group):
        raise ValueError(f"{where}'data' must be a group of arrays, not an array")
    # Store listings come in no fixed order: use the order saved by save_demonstrations, or sorted.
    available = sorted(data.keys())
    saved_order = list(root.attrs.get("obs_keys", []))
    if sorted(saved_order + [action_key]) == available:
        available = saved_order + [action_key]
    keys = select_obs_keys(available, obs_keys, action_key, f"zarr store {str(path)!r} data/")
    meta = root["meta"]

    def array(group_name: str, name: str, pixels: set[str] = frozenset()) -> np.ndarray:
        label = f"{group_name}/{name}"
        arr = _zarr_array(root[group_name], name, label, where, allow_missing_chunks)
        return read_or_raise(where, label, lambda: read_array(name, arr, pixels))

    observations = {k: array("data", k, channels_last) for k in keys}

    def optional(name: str) -> np.ndarray | None:
        return array("meta", name) if name in meta else None

    metadata = root.attrs.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}the 'metadata' attribute must be a JSON object, got {type(metadata).__name__}")
    return Demonstrations(
        observations=observations,
        actions=array("data", action_key),
        episode_ends=optional("episode_ends"),
        rewards=optional("reward"),
        episode_seeds=optional("episode_seeds"),
        metadata=dict(metadata),
    )


def write_zarr(demos: Demonstrations, tmp: Path) -> None:
    """Write ``demos`` as a new zarr-v2 replay buffer at ``tmp``, every chunk stored."""
    import numcodecs

    compressor = numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.BITSHUFFLE)
    if _ZARR_MAJOR >= 3:
        root = zarr.open_group(str(tmp), mode="w-", zarr_format=2)
    else:
        root = zarr.open_group(str(tmp), mode="w-")

    def put(group: Any, name: str, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        row_bytes = max(1, arr[:1].nbytes)
        chunks = (max(1, min(len(arr), _CHUNK_BYTES // row_bytes)), *arr.shape[1:])
        # Every chunk is written, also all-zero ones (zarr 3 skips them by default), so that the
        # loader can tell a complete array from one with lost chunks.
        if _ZARR_MAJOR >= 3:
            out = group.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=chunks,
                                     compressors=compressor, config={"write_empty_chunks": True})
            out[...] = arr
        else:
            group.create_dataset(name, data=arr, chunks=chunks, compressor=compressor,
                                 write_empty_chunks=True)

    data, meta = root.require_group("data"), root.require_group("meta")
    for key, obs in demos.observations.items():
        put(data, key, obs)
    put(data, ACTION_KEY, demos.actions)
    put(meta, "episode_ends", demos.episode_ends)
    if demos.rewards is not None:
        put(meta, "reward", np.asarray(demos.rewards))
    if demos.episode_seeds is not None:
        put(meta, "episode_seeds", np.asarray(demos.episode_seeds))
    root.attrs["metadata"] = demos.metadata
    root.attrs["obs_keys"] = list(demos.observations)
