"""Read and write :class:`Demonstrations`: zarr replay buffers, numpy archives, rollouts.

Formats:

- ``.zarr`` (or any directory): the original Diffusion Policy replay-buffer layout, zarr
  format v2. ``data/<key>`` arrays with first dim N (observations and the action),
  ``meta/episode_ends`` ``(E,)``. This library also writes ``meta/reward`` ``(N,)``,
  ``meta/episode_seeds`` ``(E,)`` and the root attributes ``"metadata"`` (the dict) and
  ``"obs_keys"`` (their order; other stores load in sorted order); the original repo
  ignores them.
- ``.npz``: ``obs/<key>``, ``action``, ``episode_ends`` and optional ``reward``,
  ``episode_seeds``, ``metadata_json`` (a JSON string). Read with ``allow_pickle=False``.

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
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from rlox_dp.buffers.demonstration_buffer import ACTION_KEY, validate_demonstrations
from rlox_dp.buffers.demonstrations import Demonstrations

__all__ = ["demonstrations_from_episodes", "load_demonstrations", "save_demonstrations"]

_ZARR_MAJOR = int(zarr.__version__.split(".")[0])
_CHUNK_BYTES = 4 * 2**20  # target size of one zarr chunk along the step axis


class _PixelError(ValueError):
    """Channels-last pixels that are not integers in 0..255 (a content error, not a read error)."""


def _channels_last_to_uint8(key: str, arr: Any, chunk: int = 512) -> np.ndarray:
    """Read ``(N, H, W, C)`` pixels in ``0..255`` as ``(N, C, H, W)`` uint8, chunk by chunk."""
    if len(arr.shape) != 4:
        raise _PixelError(f"channels-last key {key!r} must have shape (N, H, W, C), got {tuple(arr.shape)}")
    n, h, w, c = arr.shape
    out = np.empty((n, c, h, w), dtype=np.uint8)
    for start in range(0, n, chunk):
        block = np.asarray(arr[start : start + chunk])
        if block.min() < 0 or block.max() > 255 or not np.array_equal(block, np.round(block)):
            raise _PixelError(f"channels-last key {key!r} must hold integer pixel values in 0..255 "
                             f"(rows {start}..{start + len(block) - 1} do not)")
        out[start : start + len(block)] = block.transpose(0, 3, 1, 2)
    return out


def _select_obs_keys(available: Sequence[str], obs_keys: Sequence[str] | None, action_key: str,
                     where: str) -> list[str]:
    if action_key not in available:
        raise ValueError(f"{where} has no action array {action_key!r}; available: {sorted(available)}")
    if obs_keys is None:
        keys = [k for k in available if k != action_key]
    else:
        if isinstance(obs_keys, str):
            raise TypeError(f"obs_keys must be a sequence of str, got the str {obs_keys!r}")
        keys = list(obs_keys)
        missing = [k for k in keys if k not in available or k == action_key]
        if missing:
            raise KeyError(f"{where} has no observation arrays {missing}; available: "
                           f"{sorted(k for k in available if k != action_key)}")
    if not keys:
        raise ValueError(f"{where} holds no observation arrays besides {action_key!r}")
    return keys


def _read_array(key: str, arr: Any, channels_last: set[str]) -> np.ndarray:
    return _channels_last_to_uint8(key, arr) if key in channels_last else np.asarray(arr[...])


def _read_or_raise(where: str, label: str, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()``; any failure to read or decode becomes a ValueError naming the store (``where``)
    and the array ``label``."""
    try:
        return read()
    except (MemoryError, _PixelError):
        raise
    except Exception as err:  # zarr codecs and zlib raise anything on damaged data
        raise ValueError(f"{where}cannot read array {label!r} (damaged or truncated data): "
                         f"{type(err).__name__}: {' '.join(str(err).split())}") from None


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


def _load_zarr(path: Path, obs_keys: Sequence[str] | None, action_key: str,
               channels_last: set[str], allow_missing_chunks: bool = False) -> Demonstrations:
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
    keys = _select_obs_keys(available, obs_keys, action_key, f"zarr store {str(path)!r} data/")
    meta = root["meta"]

    def array(group_name: str, name: str, pixels: set[str] = frozenset()) -> np.ndarray:
        label = f"{group_name}/{name}"
        arr = _zarr_array(root[group_name], name, label, where, allow_missing_chunks)
        return _read_or_raise(where, label, lambda: _read_array(name, arr, pixels))

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


def _load_npz(path: Path, obs_keys: Sequence[str] | None, action_key: str,
              channels_last: set[str]) -> Demonstrations:
    where = f"npz archive {str(path)!r}: "
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{str(path)!r} is not a readable .npz archive: not a zip file (damaged, "
                         "truncated or another format)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise ValueError(f"{str(path)!r} is not a readable .npz archive (damaged, truncated or another "
                         f"format): {type(err).__name__}: {err}") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{str(path)!r} holds a single .npy array, not a .npz archive of named arrays")
    with archive as f:
        if "episode_ends" not in f.files:
            raise ValueError(f"npz archive {str(path)!r} has no 'episode_ends' array; has {f.files}")
        available = [k[len("obs/"):] for k in f.files if k.startswith("obs/")]
        if action_key in f.files:
            available.append(action_key)
        keys = _select_obs_keys(available, obs_keys, action_key, f"npz archive {str(path)!r}")

        def read(name: str, key: str | None = None) -> np.ndarray | None:
            key = key or name
            return _read_or_raise(where, name, lambda: _read_array(key, f[name], channels_last)) if name in f.files else None

        return Demonstrations(
            observations={k: read(f"obs/{k}", k) for k in keys},
            actions=read(action_key),
            episode_ends=read("episode_ends"),
            rewards=read("reward"),
            episode_seeds=read("episode_seeds"),
            metadata=_npz_metadata(read("metadata_json"), where),
        )


def _npz_metadata(raw: np.ndarray | None, where: str) -> dict:
    """``metadata_json``: a 0-d string array holding a JSON object."""
    if raw is None:
        return {}
    try:
        if raw.shape != () or raw.dtype.kind not in "US":
            raise ValueError(f"expected a 0-d string array, got shape {raw.shape} dtype {raw.dtype}")
        metadata = json.loads(str(raw))
    except ValueError as err:
        raise ValueError(f"{where}'metadata_json' is not valid JSON: {err}") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}'metadata_json' must hold a JSON object, got {type(metadata).__name__}")
    return metadata


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
        demos = _load_zarr(path, obs_keys, action_key, channels_last, allow_missing_chunks)
    elif path.suffix == ".npz":
        demos = _load_npz(path, obs_keys, action_key, channels_last)
    else:
        raise ValueError(f"unsupported demonstrations format {str(path)!r}: expected a .zarr directory or a .npz file")
    unknown = channels_last - set(demos.observations)
    if unknown:
        raise ValueError(f"channels_last_keys {sorted(unknown)} are not observation keys {sorted(demos.observations)}")
    validate_demonstrations(demos)
    return demos


def _write_zarr(demos: Demonstrations, tmp: Path) -> None:
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


def _write_npz(demos: Demonstrations, tmp: Path) -> None:
    arrays = {f"obs/{k}": v for k, v in demos.observations.items()}
    arrays.update(action=demos.actions, episode_ends=demos.episode_ends,
                  metadata_json=np.array(json.dumps(demos.metadata)))
    if demos.rewards is not None:
        arrays["reward"] = np.asarray(demos.rewards)
    if demos.episode_seeds is not None:
        arrays["episode_seeds"] = np.asarray(demos.episode_seeds)
    with open(tmp, "wb") as f:  # a file object stops numpy from appending ".npz"
        np.savez_compressed(f, **arrays)


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
        (_write_zarr if path.suffix == ".zarr" else _write_npz)(demos, tmp)
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


def _episode_obs(i: int, obs: Any) -> dict[str, np.ndarray]:
    if isinstance(obs, Mapping):
        if not obs:
            raise ValueError(f"episodes[{i}]['obs'] is an empty dict")
        return {str(k): np.asarray(v) for k, v in obs.items()}
    return {"state": np.asarray(obs)}


def demonstrations_from_episodes(episodes: Sequence[Mapping[str, Any]]) -> Demonstrations:
    """Concatenate per-episode rollouts into :class:`Demonstrations`.

    Args:
        episodes: one mapping per episode with ``"obs"`` (dict key -> ``(L, ...)`` or an
            array ``(L, D)``, stored as key ``"state"``), ``"action"`` ``(L, D_act)``, and
            optionally ``"reward"`` ``(L,)`` and ``"seed"`` (int). Every episode must have
            the same keys; obs and actions have the same length L >= 1 (drop the final
            observation that follows the last action).
    """
    if isinstance(episodes, Mapping) or len(episodes) == 0:
        raise ValueError("episodes must be a non-empty sequence of per-episode mappings")
    obs_parts: dict[str, list[np.ndarray]] = {}
    actions, rewards, seeds, ends = [], [], [], []
    first_keys = None
    for i, ep in enumerate(episodes):
        if not isinstance(ep, Mapping) or "obs" not in ep or "action" not in ep:
            raise ValueError(f"episodes[{i}] must be a mapping with 'obs' and 'action'")
        keys = set(ep) & {"reward", "seed"}
        obs = _episode_obs(i, ep["obs"])
        if first_keys is None:
            first_keys = (keys, set(obs))
            obs_parts = {k: [] for k in obs}
        elif (keys, set(obs)) != first_keys:
            raise ValueError(f"episodes[{i}] has keys {sorted(keys)} / obs keys {sorted(obs)}; "
                             f"episodes[0] has {sorted(first_keys[0])} / {sorted(first_keys[1])}")
        action = np.asarray(ep["action"])
        if action.ndim != 2:
            raise ValueError(f"episodes[{i}]['action'] must have shape (L, D_act), got {action.shape}")
        length = action.shape[0]
        if length == 0:
            raise ValueError(f"episodes[{i}] is empty (0 steps)")
        for k, v in obs.items():
            if v.ndim < 1 or v.shape[0] != length:
                raise ValueError(f"episodes[{i}] obs {k!r} has shape {v.shape}, expected first dim "
                                 f"L = {length} (the action length; drop the final observation)")
            obs_parts[k].append(v)
        actions.append(action)
        if "reward" in keys:
            reward = np.asarray(ep["reward"])
            if reward.shape != (length,):
                raise ValueError(f"episodes[{i}]['reward'] must have shape ({length},), got {reward.shape}")
            rewards.append(reward)
        if "seed" in keys:
            seeds.append(int(ep["seed"]))
        ends.append(length)
    for k, parts in obs_parts.items():
        if len({p.shape[1:] for p in parts}) > 1:
            raise ValueError(f"obs {k!r} feature shapes differ between episodes: {sorted({p.shape[1:] for p in parts})}")
    demos = Demonstrations(
        observations={k: np.concatenate(parts) for k, parts in obs_parts.items()},
        actions=np.concatenate(actions),
        episode_ends=np.cumsum(ends).astype(np.int64),
        rewards=np.concatenate(rewards) if rewards else None,
        episode_seeds=np.asarray(seeds, dtype=np.int64) if seeds else None,
    )
    validate_demonstrations(demos)
    return demos
