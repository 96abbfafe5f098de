"""The sampler contract: a :class:`SamplingPlan` per loop, noise drawn up front, a loop without
randomness.

Every sampler of this package (DDPM, DDIM, DPM-Solver++, consistency, flow Euler / Heun)
follows the :class:`ReverseSampler` protocol::

    plan = sampler.plan(n)                                   # once per (sampler, n), cached
    x, noises = sampler.draw_noise(shape, n, generator)      # all randomness, before the loop
    denoise = denoiser.conditioned(cond, plan.timesteps)     # per-chunk conditioning
    x = sampler.run(denoise, x, plan, noises)                # the loop: no host reads, compilable

``sampler.sample(denoise, shape, n, generator)`` is these steps with a given denoise function.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

import torch
from torch import Tensor

__all__ = ["DenoiseFn", "ReverseSampler", "SamplingPlan", "check_num_steps", "draw_start_noise"]

DenoiseFn = Callable[[Tensor, Tensor], Tensor]
"""``(x (B, ...), t (B,) int64) -> (B, ...)``: the network's output at ``(x, t)``."""

StepT = TypeVar("StepT", bound=tuple)


@dataclasses.dataclass(frozen=True)
class SamplingPlan(Generic[StepT]):
    """One ``n``-step reverse loop: what the conditioning and the loop both need.

    Attributes:
        pairs: ``(t, t_prev)`` per step, descending; the network is called at ``t`` (and, for a
            Heun step, at ``t_prev``, itself the next step's ``t``).
        steps: the per-step coefficients, one NamedTuple of Python floats per step (the
            sampler's own type: :class:`~rlox_dp.diffusion.StepCoefficients`,
            ``MultistepCoefficients``, ``FlowStep``); floats, so that the loop never reads a
            value back from a device and ``torch.compile`` sees constants.
    """

    pairs: tuple[tuple[int, int], ...]
    steps: tuple[StepT, ...]

    def __post_init__(self) -> None:
        if len(self.pairs) != len(self.steps) or not self.pairs:
            raise ValueError(f"a plan needs one step per pair, at least one; got {len(self.pairs)} "
                             f"pairs and {len(self.steps)} steps")

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def timesteps(self) -> tuple[int, ...]:
        """The distinct timesteps the network is called at: ``t`` of every pair, descending."""
        return tuple(t for t, _ in self.pairs)

    @property
    def coefficients(self) -> Tensor:
        """``(n, K)`` float64 table of :attr:`steps` (columns: the fields of the step type)."""
        return torch.tensor([list(map(float, step)) for step in self.steps], dtype=torch.float64)


class ReverseSampler(Protocol):
    """What :class:`~rlox_dp.algorithms.DiffusionPolicy` and the acceleration paths use."""

    num_train_timesteps: int

    def plan(self, num_inference_steps: int) -> SamplingPlan:
        """The ``n``-step plan (cached)."""

    def draw_noise(
        self, shape: Sequence[int], num_inference_steps: int,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, init_noise: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor | None]]:
        """The start ``(B, ...)`` and one noise ``(B, ...)`` or None per step, drawn in order."""

    def run(self, denoise_fn: DenoiseFn, x: Tensor, plan: SamplingPlan,
            noises: Sequence[Tensor | None]) -> Tensor:
        """The loop from ``x`` ``(B, ...)`` along ``plan`` with the drawn ``noises``."""

    def sample(
        self, denoise_fn: DenoiseFn, shape: Sequence[int], num_inference_steps: int,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, init_noise: Tensor | None = None,
    ) -> Tensor:
        """:meth:`draw_noise`, then :meth:`run` along :meth:`plan`."""


def as_int(value: int, name: str) -> int:
    """``value`` as an int (bools refused); the TypeError names ``name``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int; got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int; got {type(value).__name__}") from None


def check_num_steps(num_inference_steps: int, num_train_timesteps: int) -> int:
    """``num_inference_steps`` as an int in ``[1, num_train_timesteps]``, else an error naming it."""
    n = as_int(num_inference_steps, "num_inference_steps")
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(
            f"num_inference_steps must lie in [1, {num_train_timesteps}] (num_train_timesteps); got {n}"
        )
    return n


def check_output(model_output: Tensor, sample: Tensor) -> None:
    """Refuse a network output that is not a tensor of the sample's shape (errors name both)."""
    if not isinstance(sample, Tensor) or not sample.is_floating_point():
        raise TypeError(
            f"sample must be a floating-point tensor; got {getattr(sample, 'dtype', type(sample))}"
        )
    if not isinstance(model_output, Tensor) or model_output.shape != sample.shape:
        got = (
            tuple(model_output.shape)
            if isinstance(model_output, Tensor)
            else type(model_output).__name__
        )
        raise ValueError(
            f"model_output must be a tensor of the sample's shape {tuple(sample.shape)}; got {got}"
        )


def draw_start_noise(
    shape: Sequence[int],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    init_noise: Tensor | None = None,
) -> Tensor:
    """The validated ``(B, ...)`` start of a sampling loop: ``init_noise`` (moved to ``device`` /
    ``dtype``, not modified) if given, else ``N(0, I)`` drawn from ``generator``.

    Args: as in :meth:`Sampler.sample` (``device`` defaults to init_noise's, else the CPU;
    ``dtype`` to init_noise's, else float32).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0 or any(s < 1 for s in shape):
        raise ValueError(f"shape must be (B, ...) with positive sizes; got {shape}")
    if init_noise is not None and not isinstance(init_noise, Tensor):
        raise TypeError(f"init_noise must be a tensor or None; got {type(init_noise).__name__}")
    if init_noise is not None and tuple(init_noise.shape) != shape:
        raise ValueError(f"init_noise must have shape {shape}; got {tuple(init_noise.shape)}")
    if device is None:
        device = init_noise.device if init_noise is not None else torch.device("cpu")
    device = torch.device(device)
    if dtype is None:
        dtype = init_noise.dtype if init_noise is not None else torch.float32
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator must live on device {device}; got a generator on {generator.device}"
        )
    if init_noise is None:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    return init_noise.to(device=device, dtype=dtype)
