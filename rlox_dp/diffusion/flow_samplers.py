"""ODE samplers for flow matching: Euler and Heun from noise (``t = 1``) to data (``t = 0``).

Convention (the one :mod:`rlox_dp.algorithms.flow` trains with): ``x_t = (1 - t) x_0 + t eps``,
``eps ~ N(0, I)``, and the network predicts the velocity ``v(x_t, t) ~ dx_t/dt = eps - x_0``.
Sampling integrates ``dx/dt = v`` from ``t = 1`` down to ``t = 0``.

Time grid: with resolution ``T`` the network is called at ``t = k / T`` for integers ``k`` and
is fed ``k`` (= ``t T``, the scale it is trained with), so the grid of ``n`` steps is
``k_i = round((n - i) T / n)``, ``i = 0..n`` (``k_0 = T``, ``k_n = 0``; uniform when ``n``
divides ``T``). Integer inputs let the denoisers precompute their per-timestep conditioning
(:meth:`Denoiser.conditioned`) exactly as for diffusion, and the sampler follows the contract of
:mod:`rlox_dp.diffusion.plan` (``plan`` / ``draw_noise`` / ``run`` / ``sample``), so
:class:`~rlox_dp.algorithms.DiffusionPolicy`'s inference (including the compiled loops of
:mod:`rlox_dp.acceleration`) drives it unchanged.

* ``"euler"``: ``x <- x + dt v(x, t)``: one network evaluation per step, first order.
* ``"heun"``: Euler predictor, then the trapezoidal corrector
  ``x <- x + dt (v(x, t) + v(x_pred, t + dt)) / 2``: second order. As in Karras et al. (2022,
  Algorithm 1) the last step (to ``t = 0``) is a plain Euler step, so ``n`` steps cost
  ``2n - 1`` evaluations and every evaluation time is a grid point where the next step starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from rlox_dp.diffusion.plan import (
    DenoiseFn,
    SamplingPlan,
    check_num_steps,
    check_output,
    draw_start_noise,
)
from rlox_dp.diffusion.samplers import Sampler
from rlox_dp.registry import Registry

__all__ = ["FLOW_SAMPLERS", "FLOW_SAMPLER_REGISTRY", "FlowSampler", "FlowStep"]

#: The integration methods of :class:`FlowSampler`, by name (the shared registry rule: any case,
#: did-you-mean on a miss); the value is the number of network evaluations per step before the
#: last one (Heun's corrector adds one).
FLOW_SAMPLER_REGISTRY: Registry[int] = Registry("flow sampler")
FLOW_SAMPLER_REGISTRY.register("euler", 1)
FLOW_SAMPLER_REGISTRY.register("heun", 2)
FLOW_SAMPLERS: tuple[str, ...] = tuple(FLOW_SAMPLER_REGISTRY.names())
"""Methods accepted by :class:`FlowSampler` (case-insensitive)."""


class FlowStep(NamedTuple):
    """One step of a plan: ``dt`` (< 0, in units of ``t``) and whether Heun corrects it."""

    dt: float
    correct: bool


class FlowSampler:
    """Deterministic ODE sampler of a velocity field (module docstring).

    Args:
        num_train_timesteps: ``T``, the time grid resolution (the network sees ``t T``).
        method: ``"euler"`` or ``"heun"`` (any case).
    """

    def __init__(self, num_train_timesteps: int, method: Literal["euler", "heun"] = "euler") -> None:
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int):
            raise TypeError(f"num_train_timesteps must be an int; got {type(num_train_timesteps).__name__}")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1; got {num_train_timesteps}")
        self.num_train_timesteps = num_train_timesteps
        self.method = FLOW_SAMPLER_REGISTRY.canonical(method)  # UnknownNameError (a ValueError) on a miss

    def __repr__(self) -> str:
        return f"FlowSampler(T={self.num_train_timesteps}, method={self.method!r})"

    def network_evaluations(self, num_inference_steps: int) -> int:
        """Denoiser calls of an ``n``-step loop: ``n`` (Euler) or ``2n - 1`` (Heun)."""
        n = check_num_steps(num_inference_steps, self.num_train_timesteps)
        per_step = FLOW_SAMPLER_REGISTRY.get(self.method)
        return per_step * n - (per_step - 1)

    def timesteps(self, num_inference_steps: int) -> Tensor:
        """Descending ``(n + 1,)`` int64 grid ``k_i = round((n - i) T / n)``, from ``T`` to 0."""
        n = check_num_steps(num_inference_steps, self.num_train_timesteps)
        numer = (n - torch.arange(n + 1, dtype=torch.int64)) * self.num_train_timesteps
        return (2 * numer + n) // (2 * n)

    def plan(self, num_inference_steps: int) -> SamplingPlan[FlowStep]:
        """The :class:`SamplingPlan` of ``n`` steps: pairs ``(k_i, k_{i+1})`` and a
        :class:`FlowStep` each. The network is only called at a pair's first element (Heun's
        corrector at ``k_{i+1}``, the next pair's first element)."""
        ks = self.timesteps(num_inference_steps).tolist()
        pairs = tuple(zip(ks[:-1], ks[1:], strict=True))
        T = self.num_train_timesteps
        steps = tuple(FlowStep((k_next - k) / T, self.method == "heun" and k_next > 0)
                      for k, k_next in pairs)
        return SamplingPlan(pairs, steps)

    def draw_noise(
        self,
        shape: Sequence[int],
        num_inference_steps: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        init_noise: Tensor | None = None,
    ) -> tuple[Tensor, list[None]]:
        """The start ``x_1 ~ N(0, I)`` ``(B, ...)`` and one None per step (nothing else is random)."""
        n = check_num_steps(num_inference_steps, self.num_train_timesteps)
        return draw_start_noise(shape, generator, device, dtype, init_noise), [None] * n

    def run(
        self, velocity_fn: DenoiseFn, x: Tensor, plan: SamplingPlan[FlowStep], noises: Sequence[None]
    ) -> Tensor:
        """Integrate from ``x`` ``(B, ...)`` at ``t = plan.pairs[0][0] / T`` along the plan.

        ``velocity_fn(x (B, ...), k (B,) int64) -> (B, ...)``; traceable by ``torch.compile``.
        """
        for (k, k_next), step, _ in zip(plan.pairs, plan.steps, noises, strict=True):
            v = velocity_fn(x, torch.full((x.shape[0],), k, dtype=torch.long, device=x.device))
            check_output(v, x)
            x_pred = x + step.dt * v
            if step.correct:
                k_batch = torch.full((x.shape[0],), k_next, dtype=torch.long, device=x.device)
                v_next = velocity_fn(x_pred, k_batch)
                check_output(v_next, x)
                x = x + (0.5 * step.dt) * (v + v_next)
            else:
                x = x_pred
        return x

    #: :meth:`Sampler.sample` itself: :meth:`draw_noise`, then :meth:`run` along :meth:`plan`.
    sample = Sampler.sample
