"""One gradient step of the training loop, and the batch it trains on.

    step = TrainStep(policy, training, device=torch.device("cpu"))  # a resolved TrainingConfig
    batch, global_batch = sample_batch(buffer, training.batch_size, data_generator, device, dist)
    result = step(batch, step=0, total_steps=1000, generator=model_generator, global_batch=global_batch)

:class:`TrainStep` owns what a gradient step needs besides the policy: the fused AdamW optimizer,
the learning-rate schedule (:func:`rlox_dp.runtime.lr_at`), mixed precision (autocast, and the
fp16 ``GradScaler``), gradient clipping, the EMA of the weights, and the data-parallel wrapper
(``torchrun``: :class:`~torch.nn.parallel.DistributedDataParallel`, with this rank's
:class:`~rlox_dp.distributed.GlobalBatch` handed to the loss).

Non-finite losses without a host sync per step: every step computes, on the device, a flag
"the loss of the global batch or the total gradient norm is not finite" and hands it to the
fused AdamW kernel as ``found_inf`` (as ``GradScaler`` does), which then leaves the weights and
the optimizer state untouched; an optimizer without that support waits for the flag instead.
The flags are read (one sync) by :meth:`TrainStep.check_finite`, which the loop calls at logging
intervals, before checkpoints and evaluations, and at the end: it raises
:class:`~rlox_dp.runtime.NonFiniteLossError` naming the first bad step. So the weights never
take a non-finite update, and the EMA only ever averages finite weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rlox_dp.distributed import DistributedContext, GlobalBatch
from rlox_dp.ema import EMA
from rlox_dp.runtime import NonFiniteLossError, lr_at

if TYPE_CHECKING:  # annotations only: rlox_dp.training stays importable from the layers below
    from rlox_dp.algorithms import Algorithm
    from rlox_dp.buffers import Batch, DemonstrationBuffer

__all__ = ["StepResult", "TrainStep", "TrainStepSettings", "sample_batch"]


class TrainStepSettings(Protocol):
    """The fields :class:`TrainStep` reads (a resolved :class:`~rlox_dp.training.TrainingConfig`)."""

    lr: float
    adam_betas: tuple[float, float]
    adam_eps: float
    weight_decay: float
    lr_scheduler: str
    lr_warmup_steps: int
    grad_clip_norm: float | None
    use_ema: bool
    ema_power: float
    ema_inv_gamma: float
    ema_min_decay: float
    ema_max_decay: float
    mixed_precision: str | None
    compile_model: bool
    compile_mode: str | None


@dataclass(frozen=True)
class StepResult:
    """What one :class:`TrainStep` call did (tensors stay on the device: reading them syncs).

    Attributes:
        step: index of the gradient step (0-based: the run's step count before it).
        loss: ``()`` this process's training loss (detached, float32).
        info: the algorithm's detached ``()`` diagnostics (``"mse"`` ...).
        lr: the learning rate the step used.
        grad_norm: ``()`` total gradient norm before clipping (``None`` without clipping).
        ema_decay: the EMA decay of this step (``None`` without EMA).
    """

    step: int
    loss: torch.Tensor
    info: dict[str, torch.Tensor]
    lr: float
    grad_norm: torch.Tensor | None
    ema_decay: float | None


def sample_batch(
    buffer: DemonstrationBuffer, batch_size: int, generator: torch.Generator, device: torch.device,
    dist: DistributedContext,
) -> tuple[Batch, GlobalBatch | None]:
    """Draw a global batch of ``batch_size`` window indices and return this rank's windows.

    Every rank draws the same indices (same generator state) and keeps its contiguous slice.
    The indices are drawn on ``device`` whatever the buffer's device, so a host buffer trains on
    exactly the windows a device buffer would; host windows are copied to ``device`` (pinned,
    asynchronously, on CUDA).

    Returns:
        ``(batch, global_batch)``: ``batch.action`` ``(batch_size / world_size, H, D_act)`` on
        ``device``, and where it sits in the global batch (``None`` in a single process).
    """
    indices = torch.randint(len(buffer), (batch_size,), device=device, generator=generator).to(buffer.device)
    batch = buffer.window(indices[dist.local_slice(batch_size)])
    if batch.action.device != device:  # buffer_device="cpu"
        if device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
    return batch, dist.global_batch(batch_size)


class TrainStep:
    """One optimizer step on a batch: loss, backward, clipping, AdamW, EMA (module docstring).

    Args:
        policy: the algorithm to train (its parameters get the optimizer).
        settings: optimizer, EMA, mixed precision and compile fields (:class:`TrainStepSettings`).
        device: the training device (fp16 needs CUDA; the fused AdamW runs on CPU and CUDA).
        dist: the data-parallel context; with more than one rank the policy is wrapped in
            ``DistributedDataParallel``.

    Raises:
        ValueError: ``mixed_precision="fp16"`` on a device other than CUDA.
    """

    def __init__(self, policy: Algorithm, settings: TrainStepSettings, *, device: torch.device,
                 dist: DistributedContext | None = None) -> None:
        if settings.mixed_precision == "fp16" and device.type != "cuda":
            raise ValueError(
                f"config field 'mixed_precision': 'fp16' needs a CUDA device, got device {device}; "
                "use 'bf16' on CPU"
            )
        self.policy, self.settings, self.device = policy, settings, device
        self.dist = dist if dist is not None else DistributedContext()
        # Fused AdamW: one kernel over all parameters instead of a loop of per-op kernels
        # (about 10x faster on CPU for a 250 M-parameter U-Net; see benchmarks/speed.py); it also
        # skips a step on the device when told to (``found_inf``).
        self.optimizer = torch.optim.AdamW(
            policy.optimizer_param_groups(settings.weight_decay), lr=settings.lr, betas=settings.adam_betas,
            eps=settings.adam_eps, weight_decay=settings.weight_decay, fused=device.type in ("cpu", "cuda"),
        )
        self.ema = (
            EMA(policy, power=settings.ema_power, inv_gamma=settings.ema_inv_gamma,
                min_decay=settings.ema_min_decay, max_decay=settings.ema_max_decay)
            if settings.use_ema else None
        )
        if settings.compile_model:
            # Networks compiled in place (state-dict keys unchanged); the loss code stays eager.
            policy.compile_networks(mode=settings.compile_mode)
            if self.ema is not None:
                self.ema.model.compile_networks(mode=settings.compile_mode)
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.mixed_precision)
        #: fp16 only: scales the loss; steps whose gradients overflow are skipped by it.
        self.scaler = torch.amp.GradScaler("cuda") if settings.mixed_precision == "fp16" else None
        self.module: torch.nn.Module = policy
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.module = DistributedDataParallel(
                policy, device_ids=[device.index] if device.type == "cuda" else None
            )
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, bad flag) not checked yet

    def lr_at(self, step: int, total_steps: int) -> float:
        """Learning rate of gradient step ``step`` (0-based) in a run of ``total_steps``."""
        s = self.settings
        return lr_at(step, s.lr, s.lr_warmup_steps, total_steps, s.lr_scheduler)

    def __call__(self, batch: Batch, *, step: int, total_steps: int, generator: torch.Generator | None,
                 global_batch: GlobalBatch | None = None) -> StepResult:
        """Train on ``batch`` (``batch.action`` ``(B, H, D_act)``, normalized) for one step.

        Args:
            batch: this rank's windows (see :func:`sample_batch`).
            step: the step's 0-based index (sets the learning rate).
            total_steps: the run's length (the schedule's end).
            generator: the model generator (noise, timesteps, crops).
            global_batch: where ``batch`` sits in the global batch, passed to the loss.
        """
        lr = self.lr_at(step, total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, info = self.module(batch, generator, global_batch=global_batch)
        loss = loss.float()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: scaled loss; steps with inf/NaN grads skipped
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        params = [p for p in self.policy.parameters() if p.grad is not None]
        clip = self.settings.grad_clip_norm
        norm = (torch.nn.utils.clip_grad_norm_(params, clip) if clip is not None
                else torch.nn.utils.get_total_norm([p.grad for p in params]))
        # The same flag on every rank: the loss of the global batch, the all-reduced gradients.
        bad = ~torch.isfinite(self.dist.all_reduce_sum(loss))
        if self.scaler is not None:  # fp16 gradients overflow now and then: the scaler's business
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            bad = bad | ~torch.isfinite(norm)
            self._optimizer_step_unless(bad)
        decay = self.ema.update(self.policy) if self.ema is not None else None
        self._pending.append((step, bad))
        return StepResult(step, loss.detach(), info, lr, norm if clip is not None else None, decay)

    def _optimizer_step_unless(self, bad: torch.Tensor) -> None:
        """``optimizer.step()`` unless ``bad``: on the device for the fused AdamW, else after a sync."""
        if self.optimizer.defaults.get("fused"):
            self.optimizer.found_inf = bad.float()  # read by the fused kernel, as GradScaler does
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf
        elif not bool(bad):
            self.optimizer.step()

    def check_finite(self) -> None:
        """Read the flags of the steps since the last check (one host sync; free when none).

        Raises:
            NonFiniteLossError: naming the first step whose loss or gradients were not finite
                (that step, and every other bad one, left the weights unchanged).
        """
        if not self._pending:
            return
        steps = [s for s, _ in self._pending]
        flags = torch.stack([f for _, f in self._pending])
        self._pending.clear()
        if not bool(flags.any()):
            return
        bad = flags.nonzero().flatten().tolist()
        raise NonFiniteLossError(
            f"non-finite training loss or gradients at step {steps[bad[0]]} ({len(bad)} of steps "
            f"{steps[0]}..{steps[-1]}); those steps left the weights unchanged and training stopped "
            f"at step {steps[-1] + 1}. Lower the learning rate or check the demonstrations."
        )

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's and the scaler's states (the EMA and the policy are saved apart)."""
        return {"optimizer": self.optimizer.state_dict(),
                "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (a missing scaler state is ignored)."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
