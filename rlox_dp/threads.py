"""How many torch threads CPU training and evaluation use, chosen from the free cores and the work.

PyTorch's default of one intra-op thread per core is a poor fit for this library's small networks
on a shared machine: when another process occupies a core, the threads of each parallel region
wait for the one that is descheduled, and a step can get several times slower than with a single
thread. The rule (:func:`choose_num_threads`):

- free cores = the cores this process may use (CPU affinity, cgroup CPU quota) minus the other
  processes' runnable threads on them (sampled for ~0.1 s from ``/proc``; the 1-minute load
  average minus one where ``/proc`` is missing), shared among the ``torchrun`` ranks of this machine;
- work = the mean FLOPs of one matrix multiply / convolution of a step (counted once per policy
  with ``torch.utils.flop_counter`` at batch 1, times the batch size); every thread should get
  at least :data:`MIN_FLOPS_PER_THREAD` of each;
- threads = min(free cores, work / MIN_FLOPS_PER_THREAD), at least 1.

An explicit count always wins: ``Trainer(threads=N)``, ``config={"threads": N}`` or
``--threads N``; so does ``OMP_NUM_THREADS`` or a ``torch.set_num_threads`` call made after
``rlox_dp`` was imported (both are kept; a call that sets torch's own default count again cannot
be told apart from no call). The choice is logged. Results are bit-identical for a
given thread count; pin the count to compare runs bit for bit across machines or loads.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "MIN_FLOPS_PER_THREAD",
    "CpuLoad",
    "choose_num_threads",
    "configure_threads",
    "configure_threads_for_batch",
    "cpu_load",
    "policy_flops_per_sample",
    "restore_threads",
]

logger = logging.getLogger("rlox_dp")

#: FLOPs of one matmul / convolution below which another thread costs more than it saves: about
#: 50 µs of one core at 20 GFLOP/s, several times the hand-off between threads of a parallel region.
MIN_FLOPS_PER_THREAD = 1e6

#: Seconds between two automatic choices during training: a neighbour that starts (or stops) after
#: the first choice would otherwise leave threads spinning on a core it took (or a core idle).
#: One check samples the load for ~0.1 s, so it costs ~1 % of the time at this interval.
RECHECK_S = 10.0

_STARTUP_THREADS = torch.get_num_threads()  # torch's count before any rlox_dp choice
#: "ours": the count rlox_dp set last (a different current count was set by the user);
#: "logged": kind of work -> the count last logged for it.
_state: dict[str, Any] = {"ours": None, "logged": {}}


@dataclass(frozen=True)
class CpuLoad:
    """What :func:`cpu_load` sees: ``usable_cores`` this process may run on and the ``busy``
    ones among them (other processes' runnable threads, a mean over the samples)."""

    usable_cores: int
    busy: float


def _cgroup_cpu_limit() -> int | None:
    """Cores allowed by a cgroup CPU quota (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return max(1, math.ceil(quota / period)) if quota > 0 else None
    except (OSError, ValueError):
        return None


def _running_threads() -> tuple[int, int] | None:
    """``(runnable threads on the machine, runnable threads of this process)`` from ``/proc``."""
    try:
        with open("/proc/loadavg") as f:
            total = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None
    own = 0
    for stat in glob.glob("/proc/self/task/*/stat"):
        try:
            with open(stat) as f:
                own += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return total, max(own, 1)  # the thread reading is running


def cpu_load(samples: int = 20, interval_s: float = 0.005) -> CpuLoad:
    """Usable cores and how many of them other processes keep busy, right now.

    Args:
        samples, interval_s: ``/proc/loadavg`` is read ``samples`` times, ``interval_s`` apart.

    Returns:
        :class:`CpuLoad`. Other processes' runnable threads are counted machine-wide and scaled
        to this process's share of the machine's cores.
    """
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    machine = max(os.cpu_count() or affinity, affinity)
    limit = _cgroup_cpu_limit()
    usable = min(affinity, limit) if limit is not None else affinity
    counts = []
    for i in range(samples):
        running = _running_threads()
        if running is None:
            break
        counts.append(max(0, running[0] - running[1]))
        if i + 1 < samples:
            time.sleep(interval_s)
    if counts:
        others = sum(counts) / len(counts)
    elif hasattr(os, "getloadavg"):
        others = max(0.0, os.getloadavg()[0] - 1.0)
    else:
        others = 0.0
    return CpuLoad(usable_cores=usable, busy=others * affinity / machine)


def choose_num_threads(usable_cores: int, busy: float, flops_per_op: float | None = None,
                       local_world_size: int = 1) -> int:
    """The rule of this module: ``min(free cores, flops_per_op / MIN_FLOPS_PER_THREAD)``, >= 1.

    Args:
        usable_cores: cores this process may run on.
        busy: how many of them other processes keep busy (may be fractional).
        flops_per_op: mean FLOPs of one matmul / convolution of the work; None: unknown (only the
            free cores count).
        local_world_size: processes of this job on the machine (torchrun), sharing the free cores.
    """
    free = max(1, min(usable_cores, round(usable_cores - busy)))
    free = max(1, free // max(1, local_world_size))
    if flops_per_op is None:
        return free
    return max(1, min(free, int(flops_per_op // MIN_FLOPS_PER_THREAD)))


def _probe_batch(policy: Any, device: torch.device) -> Any:
    """A batch of one all-zero normalized window with the policy's shapes."""
    from rlox_dp.buffers import Batch

    cfg = policy.config
    obs = {k: torch.zeros(1, cfg.n_obs_steps, *space.shape, device=device)
           for k, space in policy.observation_space.spaces.items()}
    horizon = cfg.horizon
    return Batch(obs=obs, action=torch.zeros(1, horizon, policy.action_dim, device=device),
                 action_is_pad=torch.zeros(1, horizon, dtype=torch.bool, device=device))


def policy_flops_per_sample(policy: Any) -> float:
    """Mean FLOPs of one matmul / convolution of the policy's loss, per sample of the batch.

    Counted with ``torch.utils.flop_counter`` on one forward pass at batch 1 (matmul and
    convolution FLOPs are linear in the batch), divided by the number of weight matrices (each
    used about once per pass). Runs in eval mode without gradients and leaves torch's random
    state, the module's mode and its weights as they were.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = policy.device
    n_weights = sum(1 for p in policy.parameters() if p.dim() >= 2)
    if n_weights == 0:
        return 0.0
    was_training = policy.training
    counter = FlopCounterMode(display=False)
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad(), counter:
            policy.eval()
            policy.compute_loss(_probe_batch(policy, device), torch.Generator(device).manual_seed(0))
    finally:
        policy.train(was_training)
    return counter.get_total_flops() / n_weights


def configure_threads(requested: int | None, device: torch.device | str = "cpu",
                      flops_per_op: float | None = None, what: str = "") -> int:
    """Set torch's intra-op thread count for CPU work and return it (see the module docstring).

    Args:
        requested: an explicit count (wins), or None to choose.
        device: on a non-CPU device the count is left alone (returned unchanged).
        flops_per_op: mean FLOPs of one matmul / convolution of the coming work (see
            :func:`policy_flops_per_sample`); None: unknown.
        what: the coming work, for the log line ("training", "evaluation").

    Raises:
        ValueError: ``requested`` is not a positive int.
    """
    if requested is not None and (isinstance(requested, bool) or not isinstance(requested, int) or requested < 1):
        raise ValueError(f"threads must be a positive int or None (automatic), got {requested!r}")
    current = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        return current
    if requested is not None:
        threads, reason = requested, "requested"
    elif os.environ.get("OMP_NUM_THREADS"):
        threads, reason = current, "OMP_NUM_THREADS"
    elif current != _STARTUP_THREADS and current != _state["ours"]:
        threads, reason = current, "set with torch.set_num_threads"
    else:
        load = cpu_load()
        threads = choose_num_threads(load.usable_cores, load.busy, flops_per_op,
                                     int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        work = "unknown" if flops_per_op is None else f"{flops_per_op / 1e6:.2g} MFLOP"
        reason = (f"automatic: {load.usable_cores} usable cores, {load.busy:.1f} busy with other "
                  f"processes, {work} per matmul; threads=N overrides")
    if threads != current:
        torch.set_num_threads(threads)
        _state["ours"] = threads
    if _state["logged"].get(what) != threads:  # once per kind of work, and when it changes
        logger.info("torch threads%s: %d (%s)", f" for {what}" if what else "", threads, reason)
        _state["logged"][what] = threads
    return threads


def configure_threads_for_batch(requested: int | None, device: torch.device | str,
                                flops_per_sample: float | None, batch: int, what: str) -> int:
    """:func:`configure_threads` for work on ``batch`` samples of ``flops_per_sample`` FLOPs per
    matmul each (None: unknown); returns the thread count *before* (for :func:`restore_threads`)."""
    before = torch.get_num_threads()
    flops = flops_per_sample * batch if flops_per_sample is not None else None
    configure_threads(requested, device, flops, what)
    return before


def restore_threads(count: int) -> None:
    """Set the thread count back to ``count`` (what it was before :func:`configure_threads`)."""
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
        _state["ours"] = count
