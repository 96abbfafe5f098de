"""Which precision the image encoders' trunk runs in: a capability check, not an assumption.

bf16 autocast with channels-last input speeds up the convolutions of the encoders where the
hardware has native bf16 (CUDA GPUs with bf16; CPUs with AVX512-BF16 or AMX-BF16 through oneDNN).
Elsewhere bf16 convolutions are emulated and several times slower than float32, so ``"auto"``
picks float32 there.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

__all__ = ["VISION_PRECISIONS", "bf16_is_fast", "resolve_vision_precision"]

#: accepted values of ``vision_precision``
VISION_PRECISIONS = ("auto", "float32", "bfloat16")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def bf16_is_fast(device_type: str = "cpu") -> bool:
    """Whether bf16 autocast is native (fast) on this machine's ``device_type``.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: oneDNN available and the CPU has AVX512-BF16 or
    AMX-BF16 (torch's own check, else ``/proc/cpuinfo``); without them bf16 convolutions are
    emulated and several times slower than float32.
    """
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None and check() for check in checks):
        return True
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def resolve_vision_precision(precision: str, device: torch.device | str) -> str:
    """``"auto"`` -> ``"bfloat16"`` where :func:`bf16_is_fast` on ``device``, else ``"float32"``.

    ``"float32"`` and ``"bfloat16"`` are returned as given.
    """
    if precision not in VISION_PRECISIONS:
        raise ValueError(f"vision_precision must be one of {VISION_PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bfloat16" if bf16_is_fast(torch.device(device).type) else "float32"
