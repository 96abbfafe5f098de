"""Demonstrations as a numpy archive (``.npz``).

Arrays ``obs/<key>``, ``action``, ``episode_ends`` and optional ``reward``, ``episode_seeds``,
``metadata_json`` (a JSON string). Read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlox_dp.buffers.demonstrations import Demonstrations
from rlox_dp.buffers.reading import read_array, read_or_raise, select_obs_keys

__all__ = ["load_npz", "write_npz"]


def load_npz(path: Path, obs_keys: Sequence[str] | None, action_key: str,
             channels_last: set[str]) -> Demonstrations:
    """Read the archive at ``path`` (unvalidated; see :func:`~rlox_dp.buffers.loaders.load_demonstrations`)."""
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
        keys = select_obs_keys(available, obs_keys, action_key, f"npz archive {str(path)!r}")

        def read(name: str, key: str | None = None) -> np.ndarray | None:
            key = key or name
            return read_or_raise(where, name, lambda: read_array(key, f[name], channels_last)) if name in f.files else None

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


def write_npz(demos: Demonstrations, tmp: Path) -> None:
    """Write ``demos`` as a compressed archive at ``tmp`` (exactly that name, no suffix added)."""
    arrays = {f"obs/{k}": v for k, v in demos.observations.items()}
    arrays.update(action=demos.actions, episode_ends=demos.episode_ends,
                  metadata_json=np.array(json.dumps(demos.metadata)))
    if demos.rewards is not None:
        arrays["reward"] = np.asarray(demos.rewards)
    if demos.episode_seeds is not None:
        arrays["episode_seeds"] = np.asarray(demos.episode_seeds)
    with open(tmp, "wb") as f:  # a file object stops numpy from appending ".npz"
        np.savez_compressed(f, **arrays)
