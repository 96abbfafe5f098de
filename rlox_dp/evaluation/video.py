"""Episode videos: the first ``n_videos`` episodes of a rollout rendered with ``render_mode="rgb_array"``.

Each is written as ``<stem>.mp4`` with OpenCV (a dependency of gym-pusht). Without OpenCV the
frames are saved instead as ``<stem>.npz`` (key ``frames``, ``(T, H, W, 3)`` uint8).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["VideoRecorder", "video_backend", "write_video"]


def video_backend() -> str:
    """``"mp4"`` when OpenCV can write videos here, else ``"npz"``."""
    return "mp4" if importlib.util.find_spec("cv2") is not None else "npz"


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float, backend: str) -> Path:
    """Write ``frames`` (each ``(H, W, 3)`` uint8 RGB) to ``path`` + ``.mp4`` or ``.npz``."""
    array = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    if backend == "mp4":
        import cv2

        out = path.with_suffix(".mp4")
        height, width = array.shape[1:3]
        writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        try:
            for frame in array:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))  # RGB -> BGR
        finally:
            writer.release()
        return out
    out = path.with_suffix(".npz")
    np.savez_compressed(out, frames=array)
    return out


class VideoRecorder(gym.Wrapper):
    """Records the episodes whose reset seed is in ``names`` (seed -> file stem) to ``video_dir``."""

    def __init__(self, env: gym.Env, video_dir: str, names: Mapping[int, str], backend: str):
        super().__init__(env)
        self._video_dir = Path(video_dir)
        self._names = dict(names)
        self._backend = backend
        self._fps = float(env.metadata.get("render_fps") or 30)
        self._frames: list[np.ndarray] | None = None
        self._stem: str | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._stem = self._names.get(seed) if seed is not None else None
        self._frames = [self.env.render()] if self._stem is not None else None
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._frames is not None:
            self._frames.append(self.env.render())
            if terminated or truncated:
                write_video(self._video_dir / self._stem, self._frames, self._fps, self._backend)
                self._frames = None
        return obs, reward, terminated, truncated, info
