"""Multistep consistency sampling (Song et al. 2023, Algorithm 1) over a VP noise schedule.

A consistency model ``f(x_t, t)`` maps any point of a probability-flow trajectory to its clean
end, so one evaluation at ``t = T - 1`` is a sample. More steps alternate "re-noise the estimate
to ``t_i``" and "map back to clean"::

    x0 = f(x_{T-1}, T-1),    x_{T-1} ~ N(0, init_noise_scale^2 I)
    for t_i in the remaining timesteps:  x_{t_i} = sqrt(ab_{t_i}) x0 + sqrt(1 - ab_{t_i}) z,
                                         x0 = f(x_{t_i}, t_i)

That is the affine step of :class:`~rlox_dp.diffusion.Sampler` with ``coef_x0 = sqrt(ab_prev)``,
``coef_xt = 0`` and ``std = sqrt(1 - ab_prev)`` (the final step, to the clean sample, returns the
estimate), so the sampler inherits the plans, the up-front noise draws and the compiled loops. The
chaining timesteps are the sampler's "trailing" spacing, an even partition of the training
timesteps (Consistency Policy's preset chaining steps are an even partition of its teacher's
discretization bins). ``init_noise_scale < 1`` starts from a narrower prior (Consistency Policy's
"reduced initial sample variance"); ``init_noise`` passed explicitly is used as given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rlox_dp.diffusion.sampler_registry import SAMPLER_REGISTRY
from rlox_dp.diffusion.samplers import PredictionType, Sampler
from rlox_dp.diffusion.schedules import NoiseSchedule

__all__ = ["ConsistencySampler"]


class ConsistencySampler(Sampler):
    """Multistep consistency sampling (module docstring).

    Args:
        init_noise_scale: standard deviation of the starting noise, in ``(0, 1]``.
        other args: as in :class:`Sampler` (a consistency model predicts ``"sample"``).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "sample",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        init_noise_scale: float = 1.0,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_sample_range)
        if not 0.0 < float(init_noise_scale) <= 1.0:
            raise ValueError(f"init_noise_scale must lie in (0, 1]; got {init_noise_scale}")
        self.init_noise_scale = float(init_noise_scale)

    def _extra_repr(self) -> str:
        return f", init_noise_scale={self.init_noise_scale}"

    def transition_coefficients(
        self, alpha_bar_t: Tensor, alpha_bar_prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) z``: independent of ``x_t``."""
        return alpha_bar_prev.sqrt(), torch.zeros_like(alpha_bar_t), (1.0 - alpha_bar_prev).sqrt()

    def draw_noise(
        self,
        shape: Sequence[int],
        num_inference_steps: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        init_noise: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor | None]]:
        """:meth:`Sampler.draw_noise`, with the drawn start scaled by ``init_noise_scale``."""
        x, noises = super().draw_noise(shape, num_inference_steps, generator, device, dtype,
                                       init_noise)
        if init_noise is None and self.init_noise_scale != 1.0:
            x = x * self.init_noise_scale
        return x, noises


SAMPLER_REGISTRY.register("consistency", ConsistencySampler)
