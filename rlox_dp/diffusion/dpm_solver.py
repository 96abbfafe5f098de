"""DPM-Solver++ (Lu et al. 2022), multistep second order ("2M"), for the probability-flow ODE.

A training-free sampler for the existing ε- or x0-prediction checkpoints. With
``alpha_t = sqrt(ab_t)``, ``sigma_t = sqrt(1 - ab_t)`` and the half log-SNR
``lambda_t = log(alpha_t / sigma_t)``, one step from ``t`` to ``s`` (``h = lambda_s - lambda_t``)
with the data predictions ``m0 = x0_hat(x_t, t)`` and, from the previous step,
``m1 = x0_hat(x_{t'}, t')`` (``h0 = lambda_t - lambda_{t'}``, ``r0 = h0 / h``) is::

    first order (= DDIM, eta 0):  x_s = (sigma_s / sigma_t) x_t + alpha_s (1 - e^{-h}) m0
    second order (2M, midpoint):  x_s = first order + alpha_s (1 - e^{-h}) / (2 r0) (m0 - m1)

(DPM-Solver++ paper, Algorithm 2; diffusers' ``DPMSolverMultistepScheduler`` with
``algorithm_type="dpmsolver++"``, ``solver_order=2``, ``solver_type="midpoint"``.) The first step
has no history and is first order. The final step goes to the clean sample (``t_prev = -1``,
``ab = 1``, ``sigma = 0``, ``h = inf``), where the first-order update returns the x0 estimate
itself and the second-order term is undefined (``r0 = 0``): it is always first order. That is
diffusers' ``final_sigmas_type="zero"`` (which forces ``lower_order_final``), the handling that
keeps few-step sampling stable; it also makes 1 and 2 steps identical to DDIM, and the solver
differs from DDIM from 3 steps on.

Differences from diffusers' defaults: the timesteps are this package's "trailing" spacing
(:meth:`Sampler.timesteps`, starting at ``T - 1`` like DDPM/DDIM here; diffusers' default
"linspace" also starts at ``T - 1`` but ends at ``round((T - 1) / n)``); ``clip_sample`` clamps
the x0 estimates (diffusers offers dynamic thresholding instead); only orders 1 and 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from rlox_dp.diffusion.plan import DenoiseFn, SamplingPlan, as_int, check_output
from rlox_dp.diffusion.sampler_registry import SAMPLER_REGISTRY
from rlox_dp.diffusion.samplers import (
    DDIMSampler,
    PredictionType,
    Sampler,
    StepCoefficients,
    StepOutput,
)
from rlox_dp.diffusion.schedules import NoiseSchedule

__all__ = ["DPMSolverMultistepSampler", "MultistepCoefficients"]


class MultistepCoefficients(NamedTuple):
    """:class:`StepCoefficients` plus the weight of the second-order term (0: first order).

    ``x_prev = coef_x0 * m0 + coef_xt * x_t + coef_correction * (m0 - m1)``.
    """

    x0_from_xt: float
    x0_from_eps: float
    coef_x0: float
    coef_xt: float
    std: float
    coef_correction: float


class DPMSolverMultistepSampler(Sampler):
    """DPM-Solver++ 2M (module docstring): deterministic, one model evaluation per step.

    Args:
        solver_order: 2 (DPM-Solver++ 2M) or 1 (first order, exactly DDIM with ``eta = 0``).
        other args: as in :class:`Sampler`.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        solver_order: int = 2,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_sample_range)
        if as_int(solver_order, "solver_order") not in (1, 2):
            raise ValueError(f"solver_order must be 1 or 2; got {solver_order}")
        self.solver_order = int(solver_order)
        self._first_order = DDIMSampler(schedule, eta=0.0)

    def _extra_repr(self) -> str:
        return f", solver_order={self.solver_order}"

    def _coefficient_parameters(self) -> tuple[object, ...]:
        return (self.solver_order,)

    def transition_coefficients(
        self, alpha_bar_t: Tensor, alpha_bar_prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The first-order update, DDIM's with ``eta = 0``: ``coef_xt = sigma_s / sigma_t`` and
        ``coef_x0 = alpha_s - coef_xt alpha_t = alpha_s (1 - e^{-h})`` (exactly 1 and 0 on the
        final step, ``sigma_s = 0``), ``std = 0``."""
        return self._first_order.transition_coefficients(alpha_bar_t, alpha_bar_prev)

    def _half_log_snr(self, t: int) -> float:
        ab = float(self._alphas_cumprod[t])
        return 0.5 * math.log(ab / (1.0 - ab))

    def coefficients(self, pairs: Sequence[tuple[int, int]]) -> list[MultistepCoefficients]:
        """:class:`MultistepCoefficients` of a chain of ``(t, t_prev)`` pairs.

        Step ``i`` is second order when ``solver_order == 2``, it is not the first step, the
        previous pair ends where it starts (``pairs[i-1][1] == t``: a contiguous chain, so the
        previous x0 estimate was made at ``pairs[i-1][0]``), and it does not end at the clean
        sample (``t_prev >= 0``). A single pair is therefore always first order.
        """
        first = super().coefficients(pairs)
        out = []
        for i, ((t, t_prev), c) in enumerate(zip(pairs, first, strict=True)):
            correction = 0.0
            if self.solver_order == 2 and i > 0 and pairs[i - 1][1] == t and t_prev >= 0:
                lam_t, lam_s = self._half_log_snr(t), self._half_log_snr(t_prev)
                h, h0 = lam_s - lam_t, lam_t - self._half_log_snr(pairs[i - 1][0])
                correction = c.coef_x0 * h / (2.0 * h0)  # coef_x0 / (2 r0)
            out.append(MultistepCoefficients(*c, correction))
        return out

    def apply_multistep(
        self, model_output: Tensor, sample: Tensor, c: MultistepCoefficients,
        prev_pred_x0: Tensor | None,
    ) -> StepOutput:
        """One update (module docstring) with the previous step's x0 estimate ``(B, ...)``.

        ``prev_pred_x0`` may be None only for a first-order step (``c.coef_correction == 0``).
        """
        out = self.apply_step(model_output, sample, StepCoefficients(*c[:5]), None)
        if c.coef_correction == 0.0:
            return out
        if prev_pred_x0 is None:
            raise ValueError("a second-order step needs the previous step's pred_x0; got None")
        return StepOutput(out.prev_sample + c.coef_correction * (out.pred_x0 - prev_pred_x0),
                          out.pred_x0)

    def run(
        self, denoise_fn: DenoiseFn, x: Tensor, plan: SamplingPlan, noises: Sequence[Tensor | None]
    ) -> Tensor:
        """The multistep loop (keeps the previous x0 estimate); see :meth:`Sampler.run`."""
        prev_pred_x0: Tensor | None = None
        for (t, _), c, _z in zip(plan.pairs, plan.steps, noises, strict=True):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            out = denoise_fn(x, t_batch)
            check_output(out, x)
            x, prev_pred_x0 = self.apply_multistep(out, x, c, prev_pred_x0)
        return x


SAMPLER_REGISTRY.register("dpmsolver++", DPMSolverMultistepSampler)
