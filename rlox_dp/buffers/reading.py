"""What the zarr and npz readers share: observation key choice, channel-last pixels, read errors.

Reads never return something other than what was written: an undecodable chunk or a damaged
archive raises a ValueError naming the store and the array (:func:`read_or_raise`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["PixelError", "channels_last_to_uint8", "read_array", "read_or_raise", "select_obs_keys"]


class PixelError(ValueError):
    """Channels-last pixels that are not integers in 0..255 (a content error, not a read error)."""


def channels_last_to_uint8(key: str, arr: Any, chunk: int = 512) -> np.ndarray:
    """Read ``(N, H, W, C)`` pixels in ``0..255`` as ``(N, C, H, W)`` uint8, chunk by chunk."""
    if len(arr.shape) != 4:
        raise PixelError(f"channels-last key {key!r} must have shape (N, H, W, C), got {tuple(arr.shape)}")
    n, h, w, c = arr.shape
    out = np.empty((n, c, h, w), dtype=np.uint8)
    for start in range(0, n, chunk):
        block = np.asarray(arr[start : start + chunk])
        if block.min() < 0 or block.max() > 255 or not np.array_equal(block, np.round(block)):
            raise PixelError(f"channels-last key {key!r} must hold integer pixel values in 0..255 "
                             f"(rows {start}..{start + len(block) - 1} do not)")
        out[start : start + len(block)] = block.transpose(0, 3, 1, 2)
    return out


def select_obs_keys(available: Sequence[str], obs_keys: Sequence[str] | None, action_key: str,
                    where: str) -> list[str]:
    """The observation keys to load: ``obs_keys``, or every available key but the action."""
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


def read_array(key: str, arr: Any, channels_last: set[str]) -> np.ndarray:
    """The whole array ``arr``; channel-last pixel keys as ``(N, C, H, W)`` uint8."""
    return channels_last_to_uint8(key, arr) if key in channels_last else np.asarray(arr[...])


def read_or_raise(where: str, label: str, read: Callable[[], np.ndarray]) -> np.ndarray:
    """``read()``; any failure to read or decode becomes a ValueError naming the store (``where``)
    and the array ``label``."""
    try:
        return read()
    except (MemoryError, PixelError):
        raise
    except Exception as err:  # zarr codecs and zlib raise anything on damaged data
        raise ValueError(f"{where}cannot read array {label!r} (damaged or truncated data): "
                         f"{type(err).__name__}: {' '.join(str(err).split())}") from None
