"""Per-key affine normalization of observations and actions, saved with the model.

Every key ``k`` is mapped feature-wise by ``y = x * scale_k + offset_k``. The statistics live
in registered buffers, so a :class:`Normalizer` moves with ``.to(device)``, is saved by
``state_dict()`` and can be a child module of an algorithm. Checkpoints rebuild it without
pickle: ``Normalizer.from_spec(spec)`` (JSON) followed by ``load_state_dict(tensors)``.

Modes (``NormMode``):

- ``"min_max"``: ``[min, max] -> [-1, 1]`` per feature (the Diffusion Policy default for
  low-dimensional observations and actions).
- ``"mean_std"``: zero mean, unit standard deviation per feature.
- ``"identity"``: unchanged (cast to float32).
- ``"image"``: pixel values in ``0..255`` (uint8 or float) -> float ``[0, 1]``, i.e. ``x / 255``.

Constant features (``max - min < eps`` for min_max, ``std < eps`` for mean_std) would divide
by ~0; they use ``scale = 1`` and an offset that maps the constant value to exactly 0.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

__all__ = ["NORM_MODES", "NormMode", "Normalizer"]

NormMode = Literal["min_max", "mean_std", "identity", "image"]
NORM_MODES: tuple[str, ...] = get_args(NormMode)

# Modes whose statistics are one scalar rather than one value per feature.
_SCALAR_MODES = ("identity", "image")


def _buffer_prefix(key: str) -> str:
    """Turn an arbitrary key ("observation.state") into a valid buffer-name prefix."""
    return "stats_" + re.sub(r"[^0-9A-Za-z_]", "_", key)


def _check_mode(key: str, mode: object) -> None:
    if mode not in NORM_MODES:
        raise ValueError(
            f"normalization mode for key {key!r} must be one of {NORM_MODES}, got {mode!r}"
        )


def _param_shape(mode: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return () if mode in _SCALAR_MODES else shape


def first_nonfinite_row(x: np.ndarray, chunk: int = 4096) -> int | None:
    """Index of the first row of ``x`` ``(N, ...)`` holding NaN/inf, or None (chunked, low memory)."""
    if not np.issubdtype(x.dtype, np.floating):
        return None
    for start in range(0, x.shape[0], chunk):
        block = np.isfinite(x[start : start + chunk]).reshape(min(chunk, x.shape[0] - start), -1)
        bad = np.flatnonzero(~block.all(axis=1))
        if bad.size:
            return start + int(bad[0])
    return None


def _to_numpy(key: str, x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(f"data[{key!r}] must be a numpy array or torch tensor, got {type(x).__name__}")


def _affine_stats(
    key: str, x: np.ndarray, mode: str, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 ``(scale, offset)`` for ``x`` of shape ``(N, *feature_shape)``."""
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"data[{key!r}] must have shape (N, ...) with N >= 1, got {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating)):
        raise TypeError(f"data[{key!r}] must be real numeric, got dtype {x.dtype}")
    bad_row = first_nonfinite_row(x)
    if bad_row is not None:
        raise ValueError(f"data[{key!r}] contains NaN or inf (first in row {bad_row})")
    if mode == "identity":
        return np.ones(()), np.zeros(())
    if mode == "image":
        if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
            raise ValueError(
                f"data[{key!r}] uses mode 'image', which expects pixel values in 0..255, "
                f"got range [{x.min()}, {x.max()}]; use 'identity' for images already in [0, 1]"
            )
        return np.full((), 1.0 / 255.0), np.zeros(())
    if mode == "min_max":
        lo = np.min(x, axis=0).astype(np.float64)
        hi = np.max(x, axis=0).astype(np.float64)
        constant = (hi - lo) < eps
        scale = np.where(constant, 1.0, 2.0 / np.where(constant, 1.0, hi - lo))
        offset = np.where(constant, -lo, -1.0 - lo * scale)
        return scale, offset
    mean = np.mean(x, axis=0, dtype=np.float64)
    std = np.std(x, axis=0, dtype=np.float64)
    constant = std < eps
    scale = np.where(constant, 1.0, 1.0 / np.where(constant, 1.0, std))
    return scale, -mean * scale


class Normalizer(nn.Module):
    """Per-key affine normalizer with statistics stored as module buffers.

    Build it with :meth:`fit` (from data) or :meth:`from_spec` (from a checkpoint, followed by
    ``load_state_dict``). ``Normalizer(spec)`` is the same as ``from_spec(spec)``.

    Args:
        spec: ``{key: {"mode": NormMode, "shape": [feature dims]}}``, as returned by :meth:`spec`.
    """

    def __init__(self, spec: Mapping[str, Mapping[str, Any]]) -> None:
        super().__init__()
        if not isinstance(spec, Mapping) or len(spec) == 0:
            raise ValueError(f"spec must be a non-empty mapping of key -> {{mode, shape}}, got {spec!r}")
        self._modes: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._prefixes: dict[str, str] = {}
        for key, entry in spec.items():
            if not isinstance(key, str):
                raise TypeError(f"spec keys must be str, got {key!r}")
            if not isinstance(entry, Mapping) or set(entry) != {"mode", "shape"}:
                raise ValueError(f"spec[{key!r}] must be {{'mode': ..., 'shape': [...]}}, got {entry!r}")
            _check_mode(key, entry["mode"])
            shape = entry["shape"]
            if not isinstance(shape, Sequence) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape
            ):
                raise ValueError(f"spec[{key!r}]['shape'] must be a list of positive ints, got {shape!r}")
            prefix = _buffer_prefix(key)
            clash = [k for k, p in self._prefixes.items() if p == prefix]
            if clash:
                raise ValueError(f"keys {clash[0]!r} and {key!r} map to the same buffer name {prefix!r}")
            self._modes[key] = str(entry["mode"])
            self._shapes[key] = tuple(int(d) for d in shape)
            self._prefixes[key] = prefix
            pshape = _param_shape(self._modes[key], self._shapes[key])
            # NaN placeholders: an unloaded from_spec() normalizer can never pass for a fitted one.
            self.register_buffer(prefix + "_scale", torch.full(pshape, float("nan")))
            self.register_buffer(prefix + "_offset", torch.full(pshape, float("nan")))
        self._fitted = False
        self.register_load_state_dict_post_hook(Normalizer._mark_fitted)

    @staticmethod
    def _mark_fitted(module: nn.Module, incompatible_keys: Any) -> None:
        module._fitted = True

    @classmethod
    def from_spec(cls, spec: Mapping[str, Mapping[str, Any]]) -> Normalizer:
        """Rebuild an unfitted normalizer from :meth:`spec`; fill it with ``load_state_dict``."""
        return cls(spec)

    @classmethod
    def fit(
        cls,
        data: Mapping[str, np.ndarray | torch.Tensor],
        modes: Mapping[str, NormMode],
        eps: float = 1e-4,
    ) -> Normalizer:
        """Compute statistics over the first axis of every array.

        Args:
            data: key -> array of shape ``(N, *feature_shape)`` (N may differ between keys).
            modes: key -> :data:`NormMode`; must name exactly the keys of ``data``.
            eps: features whose range (min_max) or std (mean_std) is below ``eps`` are treated
                as constant and mapped to 0.

        Returns:
            A fitted normalizer on the CPU.
        """
        if set(modes) != set(data):
            raise ValueError(
                f"modes must name exactly the keys of data; data keys {sorted(data)}, "
                f"mode keys {sorted(modes)}"
            )
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        arrays = {key: _to_numpy(key, x) for key, x in data.items()}
        spec = {}
        for key, x in arrays.items():
            _check_mode(key, modes[key])
            spec[key] = {"mode": modes[key], "shape": list(x.shape[1:])}
        norm = cls(spec)
        for key, x in arrays.items():
            scale, offset = _affine_stats(key, x, modes[key], eps)
            getattr(norm, norm._prefixes[key] + "_scale").copy_(torch.from_numpy(scale))
            getattr(norm, norm._prefixes[key] + "_offset").copy_(torch.from_numpy(offset))
        norm._fitted = True
        return norm

    @property
    def keys(self) -> tuple[str, ...]:
        """The normalized keys, in spec order."""
        return tuple(self._modes)

    def mode(self, key: str) -> NormMode:
        """The :data:`NormMode` of ``key``."""
        self._check_key(key)
        return self._modes[key]  # type: ignore[return-value]

    def shape(self, key: str) -> tuple[int, ...]:
        """The feature shape of ``key`` (the data shape without the leading N)."""
        self._check_key(key)
        return self._shapes[key]

    def spec(self) -> dict[str, dict[str, Any]]:
        """JSON-serializable ``{key: {"mode": ..., "shape": [...]}}`` for :meth:`from_spec`."""
        return {k: {"mode": self._modes[k], "shape": list(self._shapes[k])} for k in self._modes}

    def _check_key(self, key: str) -> None:
        if key not in self._modes:
            raise KeyError(f"no normalization statistics for key {key!r}; known keys: {list(self._modes)}")

    def _affine(self, key: str, x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._check_key(key)
        if not self._fitted:
            raise RuntimeError(
                "this Normalizer has no statistics yet: it was built by from_spec(); "
                "call load_state_dict() with the saved statistics first"
            )
        x = torch.as_tensor(x)
        shape = self._shapes[key]
        if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape) :]) != shape:
            raise ValueError(
                f"{key!r} input must have shape (..., {', '.join(map(str, shape))}), got {tuple(x.shape)}"
            )
        prefix = self._prefixes[key]
        scale = getattr(self, prefix + "_scale").to(x.device)
        offset = getattr(self, prefix + "_offset").to(x.device)
        return x.to(torch.float32), scale, offset

    def normalize(self, key: str, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Map raw ``x`` of shape ``(..., *feature_shape)`` to normalized float32, same shape/device."""
        x, scale, offset = self._affine(key, x)
        return torch.addcmul(offset, x, scale)  # one fused pass: offset + x * scale

    def unnormalize(self, key: str, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize`: ``(..., *feature_shape)`` float32 in raw units."""
        x, scale, offset = self._affine(key, x)
        return (x - offset) / scale

    def extra_repr(self) -> str:
        return ", ".join(f"{k}: {m} {list(self._shapes[k])}" for k, m in self._modes.items())
