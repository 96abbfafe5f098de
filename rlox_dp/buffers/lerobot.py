"""Read a LeRobotDataset (format v3.0) from a local folder into :class:`Demonstrations`.

Layout (written by LeRobot >= 0.4's ``LeRobotDataset``; the ``lerobot`` package is not needed)::

    meta/info.json                               codebase_version "v3.0", fps, features, path templates
    meta/episodes/chunk-XXX/file-YYY.parquet     one row per episode: length, where its rows and
                                                 video segments are (file indices, timestamps)
    data/chunk-XXX/file-YYY.parquet              one row per frame: the non-video features
    videos/<key>/chunk-XXX/file-YYY.mp4          one video per camera key, episodes one after another

Parquet is read with pyarrow and video with PyAV (``pip install -e ".[lerobot]"``); ``image``
features (encoded images inside the parquet rows, LeRobot's ``use_videos=False``) with Pillow.
Frame ``i`` of an episode is the video frame at time ``from_timestamp + timestamp[i]`` in that
episode's file (LeRobot's own rule); a frame farther than ``tolerance_s`` from every decoded frame
is an error.

Feature names are mapped to observation keys by :func:`default_feature_map` (``observation.state``
-> ``"state"``, ``observation.image`` -> ``"image"``, ``observation.images.<cam>`` -> ``"<cam>"``,
``observation.environment_state`` -> ``"environment_state"``) unless a mapping is given. Images
come out as ``(N, C, H, W)`` uint8, the layout of every image in this library.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlox_dp.buffers.demonstration_buffer import validate_demonstrations
from rlox_dp.buffers.demonstrations import Demonstrations

__all__ = ["default_feature_map", "has_video_features", "is_lerobot_dataset", "lerobot_features", "load_lerobot_dataset"]



def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"reading LeRobot datasets needs {module!r}: pip install -e \".[lerobot]\" (pyarrow and av)"
        ) from None


def is_lerobot_dataset(path: str | os.PathLike | Any) -> bool:
    """Whether ``path`` is a folder with a LeRobot ``meta/info.json``."""
    return isinstance(path, (str, os.PathLike)) and (Path(path) / "meta" / "info.json").is_file()


def _read_info(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise FileNotFoundError(f"LeRobot dataset folder {str(root)!r} does not exist")
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise ValueError(f"{str(root)!r} is not a LeRobot dataset: it has no meta/info.json")
    info = json.loads(path.read_text())
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3"):
        raise ValueError(
            f"{str(root)!r} is a LeRobot dataset of format {version or 'unknown'}; this reader "
            "reads format v3.0 (convert older ones with LeRobot's convert_dataset_v21_to_v30)"
        )
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ValueError(f"{str(path)!r} has no {key!r}")
    return info


def has_video_features(path: str | os.PathLike) -> bool:
    """Whether a LeRobot dataset has a camera (video) feature."""
    return any(f.get("dtype") == "video" for f in lerobot_features(path).values())


def lerobot_features(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """The ``features`` of a LeRobot dataset's ``meta/info.json`` (name -> dtype, shape ...)."""
    return _read_info(Path(path))["features"]


def default_feature_map(features: Mapping[str, Mapping[str, Any]],
                        obs_keys: Sequence[str] | None = None) -> dict[str, str]:
    """LeRobot feature name -> our observation key, for every ``observation.*`` feature.

    ``observation.state`` -> ``"state"``, ``observation.image`` -> ``"image"``,
    ``observation.images.<cam>`` -> ``"<cam>"``, ``observation.<name>`` -> ``"<name>"`` (dots
    become underscores). LeRobot's ``observation.state`` is the robot's own state, which some envs
    call ``agent_pos`` (gym-pusht, ALOHA): when ``obs_keys`` has ``"agent_pos"`` and no
    ``"state"``, it maps there. With ``obs_keys``, only features mapped to those keys are kept.
    """
    mapping: dict[str, str] = {}
    for name in features:
        if not name.startswith("observation."):
            continue
        rest = name[len("observation."):]
        key = rest[len("images."):] if rest.startswith("images.") else rest
        mapping[name] = key.replace(".", "_")
    if obs_keys is not None:
        if mapping.get("observation.state") == "state" and "state" not in obs_keys and "agent_pos" in obs_keys:
            mapping["observation.state"] = "agent_pos"
        mapping = {name: key for name, key in mapping.items() if key in obs_keys}
    return mapping


def _column(table: Any, name: str, shape: Sequence[int], dtype: str) -> np.ndarray:
    """A parquet column of (nested) fixed-size lists or scalars -> ``(N, *shape)`` array."""
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    while pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        column = column.flatten()
    values = column.to_numpy(zero_copy_only=False)
    n = table.num_rows
    if values.size != n * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"feature {name!r}: {values.size} values for {n} rows of shape {tuple(shape)}")
    return values.reshape(n, *shape).astype(dtype, copy=False)


def _read_parquet_files(files: Sequence[Path]) -> Any:
    pq = _require("pyarrow.parquet")
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f) for f in files])


def _episodes_table(root: Path, episodes: Sequence[int] | None) -> dict[str, np.ndarray]:
    """Per-episode rows (sorted by episode index) of ``meta/episodes``, without the stats."""
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise ValueError(f"{str(root)!r} has no meta/episodes/chunk-*/file-*.parquet")
    table = _read_parquet_files(files)
    columns = {name: table.column(name).to_numpy(zero_copy_only=False)
               for name in table.column_names if not name.startswith("stats/") and name != "tasks"}
    order = np.argsort(columns["episode_index"], kind="stable")
    columns = {k: v[order] for k, v in columns.items()}
    if episodes is not None:
        wanted = np.asarray(list(episodes), dtype=np.int64)
        known = set(columns["episode_index"].tolist())
        missing = sorted(set(wanted.tolist()) - known)
        if missing:
            raise ValueError(f"episodes {missing} are not in the dataset (it has {len(known)} episodes)")
        rows = [int(np.flatnonzero(columns["episode_index"] == e)[0]) for e in wanted]
        columns = {k: v[rows] for k, v in columns.items()}
    return columns


def _decode_video(path: Path, times: np.ndarray, shape: Sequence[int], tolerance_s: float,
                  out: np.ndarray, rows: np.ndarray, name: str) -> None:
    """Write the frames of ``path`` at ``times`` (seconds, any order) into ``out[rows]`` as CHW uint8."""
    av = _require("av")
    order = np.argsort(times, kind="stable")
    want, k = times[order], 0
    height, width, channels = shape
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            if k == len(want):
                break
            t = float(frame.pts * stream.time_base)
            if want[k] < t - tolerance_s:
                raise ValueError(f"{name}: no frame at {want[k]:.4f} s in {str(path)!r} (next is at {t:.4f} s)")
            image = None
            while k < len(want) and abs(want[k] - t) <= tolerance_s:
                if image is None:
                    image = frame.to_ndarray(format="rgb24" if channels == 3 else "gray")
                    if image.shape[:2] != (height, width):
                        raise ValueError(f"{name}: frames of {str(path)!r} are {image.shape[:2]}, "
                                         f"info.json says {(height, width)}")
                    image = image.reshape(height, width, channels).transpose(2, 0, 1)
                out[rows[order[k]]] = image
                k += 1
    if k < len(want):
        raise ValueError(f"{name}: {str(path)!r} ends before the frame at {want[k]:.4f} s")


def _video_frames(root: Path, info: dict[str, Any], name: str, episodes: dict[str, np.ndarray],
                  starts: np.ndarray, timestamps: np.ndarray, tolerance_s: float) -> np.ndarray:
    """``(N, C, H, W)`` uint8 frames of video feature ``name`` for the selected episodes' rows."""
    feature = info["features"][name]
    shape = _hwc_shape(feature, name)
    out = np.empty((len(timestamps), shape[2], shape[0], shape[1]), dtype=np.uint8)
    chunk = episodes[f"videos/{name}/chunk_index"]
    file = episodes[f"videos/{name}/file_index"]
    offsets = episodes[f"videos/{name}/from_timestamp"]
    lengths = episodes["length"]
    per_file: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}
    for e in range(len(lengths)):
        rows = np.arange(starts[e], starts[e] + lengths[e])
        per_file.setdefault((int(chunk[e]), int(file[e])), []).append((rows, offsets[e] + timestamps[rows]))
    for (c, f), parts in per_file.items():
        path = root / info["video_path"].format(video_key=name, chunk_index=c, file_index=f)
        rows = np.concatenate([r for r, _ in parts])
        times = np.concatenate([t for _, t in parts]).astype(np.float64)
        _decode_video(path, times, shape, tolerance_s, out, rows, name)
    return out


def _parquet_images(root: Path, table: Any, name: str, shape: tuple[int, int, int]) -> np.ndarray:
    """``(N, C, H, W)`` uint8 from an ``image`` feature: encoded files (PNG ...) stored in the
    parquet rows as ``{"bytes", "path"}`` (the bytes, or a path relative to the dataset root)."""
    import io

    from PIL import Image

    height, width, channels = shape
    out = np.empty((table.num_rows, channels, height, width), dtype=np.uint8)
    for i, cell in enumerate(table.column(name).to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        source = io.BytesIO(data) if data else root / str((cell or {}).get("path"))
        with Image.open(source) as img:
            image = np.asarray(img.convert("RGB" if channels == 3 else "L"))
        if image.shape[:2] != (height, width):
            raise ValueError(f"{name}: row {i} is an image of {image.shape[:2]}, info.json says {(height, width)}")
        out[i] = image.reshape(height, width, channels).transpose(2, 0, 1)
    return out


def _hwc_shape(feature: Mapping[str, Any], name: str) -> tuple[int, int, int]:
    shape = [int(s) for s in feature["shape"]]
    names = list(feature.get("names") or [])
    if len(shape) != 3:
        raise ValueError(f"visual feature {name!r} must have a 3-D shape, got {shape}")
    if names[:1] == ["channels"] or names[:1] == ["channel"]:  # (C, H, W) declared
        shape = [shape[1], shape[2], shape[0]]
    return shape[0], shape[1], shape[2]


def load_lerobot_dataset(
    path: str | os.PathLike,
    features: Mapping[str, str] | None = None,
    *,
    obs_keys: Sequence[str] | None = None,
    action_key: str = "action",
    episodes: Sequence[int] | None = None,
    tolerance_s: float = 1e-4,
) -> Demonstrations:
    """Load a local LeRobotDataset v3.0 folder.

    Args:
        path: the dataset root (``meta/info.json`` inside).
        features: LeRobot feature name -> our observation key (e.g.
            ``{"observation.image": "image", "observation.state": "agent_pos"}``); only these
            are loaded. Default: :func:`default_feature_map` of all ``observation.*`` features.
        obs_keys: with the default mapping, the observation keys wanted (an env's keys): the
            features mapped to them are loaded, and a key without one is an error.
        action_key: the action feature (float, shape ``(D_act,)``).
        episodes: episode indices to load (default: all), in the order given.
        tolerance_s: how far a video frame's time may be from the requested one.

    Returns:
        :class:`Demonstrations`: low-dimensional features ``(N, *shape)`` in their dtype, video
        features ``(N, C, H, W)`` uint8, actions ``(N, D_act)`` float32, ``episode_ends``,
        rewards from ``next.reward`` when present, and ``metadata`` with ``fps``, ``source``,
        ``robot_type``, ``features`` (the mapping used) and ``episode_index``.

    Raises:
        ImportError: pyarrow or av missing. FileNotFoundError: no such folder.
        ValueError / KeyError: not a v3.0 dataset, an unknown feature name, rows that are not one
            contiguous block per episode, or missing / misplaced video frames.
    """
    root = Path(path)
    info = _read_info(root)
    declared = info["features"]
    mapping = dict(default_feature_map(declared, obs_keys) if features is None else features)
    if features is None and obs_keys is not None:
        missing = sorted(set(obs_keys) - set(mapping.values()))
        if missing:
            raise ValueError(
                f"observation keys {missing} have no feature in {str(root)!r} (features: "
                f"{sorted(declared)}); map them yourself: load_lerobot_dataset(path, "
                "features={'observation....': key, ...}) and pass the result as demos"
            )
    unknown = [name for name in [*mapping, action_key] if name not in declared]
    if unknown:
        raise KeyError(f"{str(root)!r} has no features {unknown}; it has {sorted(declared)}")
    if len(set(mapping.values())) != len(mapping):
        raise ValueError(f"features: two LeRobot features map to the same key: {mapping}")
    if not mapping:
        raise ValueError(f"{str(root)!r}: no observation features to load (features={mapping})")
    eps = _episodes_table(root, episodes)
    files = sorted({(int(c), int(f)) for c, f in zip(eps["data/chunk_index"], eps["data/file_index"], strict=True)})
    table = _read_parquet_files([root / info["data_path"].format(chunk_index=c, file_index=f) for c, f in files])
    episode_index = table.column("episode_index").to_numpy()
    frame_index = table.column("frame_index").to_numpy()
    rows = []
    for e, length in zip(eps["episode_index"], eps["length"], strict=True):
        where = np.flatnonzero(episode_index == e)
        if len(where) != length or not np.array_equal(frame_index[where], np.arange(length)):
            raise ValueError(f"episode {e}: the data files hold {len(where)} rows with frame indices "
                             f"that are not 0..{length - 1} in order (meta/episodes says {length} frames)")
        rows.append(where)
    table = table.take(np.concatenate(rows))
    lengths = np.asarray(eps["length"], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    timestamps = table.column("timestamp").to_numpy().astype(np.float64)

    observations: dict[str, np.ndarray] = {}
    for name, key in mapping.items():
        feature = declared[name]
        if feature["dtype"] == "video":
            observations[key] = _video_frames(root, info, name, eps, starts, timestamps, tolerance_s)
        elif feature["dtype"] == "image":
            observations[key] = _parquet_images(root, table, name, _hwc_shape(feature, name))
        else:
            observations[key] = _column(table, name, feature["shape"], feature["dtype"])
    action = declared[action_key]
    actions = _column(table, action_key, action["shape"], "float32")
    rewards = None
    if "next.reward" in declared and "next.reward" in table.column_names:
        rewards = _column(table, "next.reward", [], "float64")
    demos = Demonstrations(
        observations=observations, actions=actions, episode_ends=ends.astype(np.int64), rewards=rewards,
        metadata={"source": str(root), "format": f"lerobot {info['codebase_version']}",
                  "fps": float(info["fps"]), "robot_type": info.get("robot_type"),
                  "features": mapping, "episode_index": [int(e) for e in eps["episode_index"]]},
    )
    validate_demonstrations(demos)
    return demos
