"""Run-time plumbing shared by training and evaluation: devices, seeds, RNG state, LR schedule."""

from __future__ import annotations

import math
import os
import random
import socket

import numpy as np
import torch

__all__ = [
    "HOSTNAME",
    "NonFiniteLossError",
    "TrainState",
    "lr_at",
    "process_alive",
    "process_start_time",
    "resolve_device",
    "seed_everything",
]

#: this machine's name, as recorded in run-directory locks and temporary file names.
HOSTNAME = socket.gethostname()


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the weights were not updated with it."""


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """``"auto"`` -> CUDA when available (GPU ``local_rank``: one per torchrun rank), else CPU;
    other values are checked and returned.

    Raises:
        ValueError: an unknown device string, or CUDA requested where none is available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return dev


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (without signalling it).

    POSIX: ``os.kill(pid, 0)`` (no signal is sent). Windows: ``OpenProcess`` and its exit code
    (``os.kill`` would terminate the process there).
    """
    if pid <= 0:
        return False
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        try:
            code = ctypes.c_ulong()
            return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def process_start_time(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``), else ``None``.

    Together with the pid it identifies a process even after the pid is reused.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[19]  # field 22 of /proc/<pid>/stat; fields[0] is field 3
    except (OSError, IndexError):
        return None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Learning rate at gradient step ``step`` (0-based): linear warmup then the named decay.

    ``"cosine"``: half-cosine from ``base_lr`` to 0 over the steps after warmup (the original
    repo's schedule); ``"linear"``: linear decay to 0; ``"constant"``: flat after warmup.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    if schedule == "linear":
        return base_lr * (1.0 - progress)
    raise ValueError(f"unknown lr schedule {schedule!r}; expected 'cosine', 'linear' or 'constant'")


class TrainState:
    """Step counter and the two explicit generators of a run (data order; noise and crops).

    Both generators are seeded from the run seed and saved in checkpoints, which is what makes a
    resumed run bit-identical to an uninterrupted one on the CPU.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.step = 0
        self.data_generator = torch.Generator(device=device)
        self.data_generator.manual_seed(seed)
        self.model_generator = torch.Generator(device=device)
        self.model_generator.manual_seed(seed + 1)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of both generators' states (taken at the start of every step)."""
        return self.data_generator.get_state(), self.model_generator.get_state()

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Undo the draws of an unfinished step (what :meth:`snapshot` returned)."""
        self.data_generator.set_state(snapshot[0])
        self.model_generator.set_state(snapshot[1])

    def rng_tensors(self) -> dict[str, torch.Tensor]:
        """RNG states as uint8 tensors (for the checkpoint)."""
        out = {
            "rng/data": self.data_generator.get_state(),
            "rng/model": self.model_generator.get_state(),
            "rng/torch_cpu": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            out["rng/torch_cuda"] = torch.cuda.get_rng_state()
        return out

    def load_rng_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`rng_tensors` saved (missing CUDA state is ignored)."""
        self.data_generator.set_state(tensors["rng/data"])
        self.model_generator.set_state(tensors["rng/model"])
        torch.set_rng_state(tensors["rng/torch_cpu"])
        if "rng/torch_cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng/torch_cuda"])
