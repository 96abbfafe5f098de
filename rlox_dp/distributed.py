"""Multi-process data-parallel training under ``torchrun`` (DistributedDataParallel).

    torchrun --nproc_per_node 2 -m rlox_dp train diffusion --env Pendulum-v1

Every rank draws the same global batch of window indices (same seed) and trains on its own
contiguous slice of it; DDP averages the gradients, so a run on N ranks takes the same steps as one
process with the global batch (up to float reduction order). Diffusion noise and timesteps are also
drawn for the global batch and sliced. Only rank 0 logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "GlobalBatch", "init_distributed"]


class GlobalBatch(NamedTuple):
    """Where this process's batch sits in the data-parallel global batch.

    An algorithm's ``compute_loss(batch, generator, global_batch=...)`` draws its per-sample
    randomness (noise, timesteps) for all ``size`` windows and keeps rows
    ``offset : offset + B``, so N ranks reproduce one process. ``None`` instead of a
    ``GlobalBatch``: the batch is the whole global batch.
    """

    size: int
    offset: int


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size`` (1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when training runs on more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    def local_slice(self, global_batch: int) -> slice:
        """This rank's contiguous part of a global batch of ``global_batch`` samples."""
        per_rank = global_batch // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def global_batch(self, size: int) -> GlobalBatch | None:
        """This rank's :class:`GlobalBatch` in a global batch of ``size`` samples (``None`` when
        not distributed: the local batch is the global one)."""
        if not self.enabled:
            return None
        return GlobalBatch(size, self.local_slice(size).start)

    def all_reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum of ``value`` over ranks (a copy; identity when not distributed)."""
        out = value.detach().clone()
        if self.enabled:
            dist.all_reduce(out)
        return out

    def barrier(self) -> None:
        """Wait for every rank (no-op when not distributed)."""
        if self.enabled:
            dist.barrier()


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ...).

    Uses NCCL for CUDA devices and gloo for the CPU. Without those variables (or with
    ``WORLD_SIZE=1``) nothing is initialized and a single-process context is returned.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank)
