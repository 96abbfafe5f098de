"""Reverse-process samplers (DDPM, DDIM) over a :class:`~rlox_dp.diffusion.NoiseSchedule`
(DPM-Solver++, also built by :func:`make_sampler`, lives in :mod:`rlox_dp.diffusion.dpm_solver`).

Samplers follow the contract of :mod:`rlox_dp.diffusion.plan` (``plan(n)`` -> a
:class:`~rlox_dp.diffusion.plan.SamplingPlan`, ``draw_noise``, ``run``, ``sample``): diffusers'
schedulers without their hidden state.

Every step is the same affine update, only its coefficients differ between samplers::

    x0_hat  = model_output                                      (prediction_type "sample")
            = (x_t - sqrt(1 - ab_t) eps_hat) / sqrt(ab_t)       (prediction_type "epsilon")
    x0_hat  = clamp(x0_hat, -clip_sample_range, clip_sample_range)      (if clip_sample)
    x_prev  = coef_x0 * x0_hat + coef_xt * x_t + std * z,   z ~ N(0, I)

with ``ab_prev = alphas_cumprod[t_prev]`` (1 when ``t_prev = -1``, the final step). Writing the
update in ``(x0_hat, x_t)`` means the noise estimate it implies is always the one re-derived
from the clipped ``x0_hat``, ``eps = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)`` (GLIDE's
convention, diffusers' ``use_clipped_model_output=True``); DDPM and DDIM are consistent with
each other, and DDIM with ``eta = 1`` has exactly DDPM's coefficients. Without clipping the
re-derived eps equals the model's.

Coefficients are computed in float64 on the CPU, once per ``(n, sampler parameters)`` (the
cached plan), and enter the loop as Python floats: the loop never reads values back from the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from rlox_dp.diffusion.plan import (
    DenoiseFn,
    SamplingPlan,
    as_int,
    check_num_steps,
    check_output,
    draw_start_noise,
)
from rlox_dp.diffusion.schedules import NoiseSchedule

__all__ = [
    "SAMPLERS",
    "DDIMSampler",
    "DDPMSampler",
    "Sampler",
    "StepCoefficients",
    "StepOutput",
    "draw_start_noise",
]

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmsolver++")
"""The samplers a diffusion policy chooses with ``noise_scheduler_type`` (any case);
:func:`~rlox_dp.diffusion.sampler_registry.make_sampler` builds any registered sampler."""

PredictionType = Literal["epsilon", "sample"]
_PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "sample")


class StepOutput(NamedTuple):
    """Result of one reverse step.

    Attributes:
        prev_sample: ``(B, ...)`` the sample at ``t_prev`` (the final sample when ``t_prev = -1``).
        pred_x0: ``(B, ...)`` the model's (clipped, if ``clip_sample``) estimate of ``x_0``.
    """

    prev_sample: Tensor
    pred_x0: Tensor


class StepCoefficients(NamedTuple):
    """Float64 coefficients of one ``(t, t_prev)`` step, as Python floats (module docstring)."""

    x0_from_xt: float  # sqrt(1 / ab_t)
    x0_from_eps: float  # sqrt(1 / ab_t - 1)
    coef_x0: float
    coef_xt: float
    std: float


class Sampler(ABC):
    """Stateless reverse-process sampler; subclasses define :meth:`transition_coefficients`.

    Args:
        schedule: the noise schedule the model was trained with. Its ``alphas_cumprod`` is
            copied (float64, CPU) at construction.
        prediction_type: what the model predicts, ``"epsilon"`` (the noise) or ``"sample"`` (x_0).
        clip_sample: clamp the predicted ``x_0`` to ``[-clip_sample_range, clip_sample_range]``
            before each update (the noise estimate is then re-derived from the clamped x_0).
        clip_sample_range: positive clamp bound (1.0 for data normalized to [-1, 1]).
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule; got {type(schedule).__name__}")
        if prediction_type not in _PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {_PREDICTION_TYPES}; got {prediction_type!r}"
            )
        if not isinstance(clip_sample, bool):
            raise TypeError(f"clip_sample must be a bool; got {type(clip_sample).__name__}")
        if not (float(clip_sample_range) > 0.0 and float(clip_sample_range) < float("inf")):
            raise ValueError(
                f"clip_sample_range must be a positive finite float; got {clip_sample_range}"
            )
        self.schedule = schedule
        self.prediction_type: PredictionType = prediction_type
        self.clip_sample = clip_sample
        self.clip_sample_range = float(clip_sample_range)
        self._alphas_cumprod = schedule.alphas_cumprod.detach().to("cpu", torch.float64)
        self._plans: dict[tuple[object, ...], SamplingPlan] = {}

    @property
    def num_train_timesteps(self) -> int:
        """T of the schedule."""
        return self._alphas_cumprod.shape[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(T={self.num_train_timesteps}, prediction_type="
            f"{self.prediction_type!r}, clip_sample={self.clip_sample}, "
            f"clip_sample_range={self.clip_sample_range}{self._extra_repr()})"
        )

    def _extra_repr(self) -> str:
        return ""

    @abstractmethod
    def transition_coefficients(
        self, alpha_bar_t: Tensor, alpha_bar_prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Coefficients of ``x_prev = coef_x0 * x0_hat + coef_xt * x_t + std * z``.

        Args:
            alpha_bar_t: ``(N,)`` float64 ``ab`` at the current timesteps.
            alpha_bar_prev: ``(N,)`` float64 ``ab`` at the previous timesteps (1 for the final step).

        Returns:
            ``(coef_x0, coef_xt, std)``, each ``(N,)`` float64, ``std >= 0``.
        """

    # --------------------------------------------------------------- timesteps
    def timesteps(self, num_inference_steps: int) -> Tensor:
        """Descending ``(num_inference_steps,)`` int64 timesteps with "trailing" spacing.

        ``t_i = round((n - i) * T / n) - 1`` for ``i = 0..n-1`` (rounding half up, in exact integer
        arithmetic; diffusers' ``"trailing"`` uses numpy's round-half-even and can differ by one on
        exact ties). The first timestep is always ``T - 1``: the ``N(0, I)`` prior only matches
        ``q(x_t)`` at the last training step, while "leading" spacing (``0, T/n, 2T/n, ...``)
        would start at ``T - T/n``, a noise level the prior does not match. Consecutive values
        differ by at least 1, so they are unique; the last one is ``round(T / n) - 1 >= 0``.
        """
        n = check_num_steps(num_inference_steps, self.num_train_timesteps)
        T = self.num_train_timesteps
        numer = (n - torch.arange(n, dtype=torch.int64)) * T
        return (2 * numer + n) // (2 * n) - 1

    def coefficients(self, pairs: Sequence[tuple[int, int]]) -> list[StepCoefficients]:
        """The :class:`StepCoefficients` of each ``(t, t_prev)`` pair (e.g. a plan's ``pairs``).

        Each ``t`` must lie in ``[0, T)`` and each ``t_prev`` in ``[-1, t)``.
        """
        T = self.num_train_timesteps
        for t_i, t_prev_i in pairs:
            if not 0 <= as_int(t_i, "t") < T:
                raise ValueError(f"t must lie in [0, {T - 1}]; got {t_i}")
            if not -1 <= as_int(t_prev_i, "t_prev") < t_i:
                raise ValueError(f"t_prev must lie in [-1, t) = [-1, {t_i}); got {t_prev_i}")
        t = torch.tensor([p[0] for p in pairs], dtype=torch.long)
        t_prev = torch.tensor([p[1] for p in pairs], dtype=torch.long)
        ab = self._alphas_cumprod
        ab_t = ab[t]
        ab_prev = torch.where(t_prev >= 0, ab[t_prev.clamp(min=0)], torch.ones_like(ab_t))
        coef_x0, coef_xt, std = self.transition_coefficients(ab_t, ab_prev)
        table = torch.stack(
            [(1.0 / ab_t).sqrt(), (1.0 / ab_t - 1.0).sqrt(), coef_x0, coef_xt, std], 1
        )
        if not bool(torch.isfinite(table).all()) or bool((std < 0).any()):
            raise RuntimeError(f"{type(self).__name__} produced invalid step coefficients: {table}")
        return [StepCoefficients(*row) for row in table.tolist()]

    def plan(self, num_inference_steps: int) -> SamplingPlan:
        """The :class:`SamplingPlan` of an ``n``-step loop: the pairs of :meth:`timesteps`
        (``(t_i, t_{i+1})``, the last one ``(t_{n-1}, -1)``) and their :meth:`coefficients`.

        Cached per ``(n, parameters)``: the schedule is copied at construction and the
        coefficients are a pure function of it, ``n`` and :meth:`_coefficient_parameters`.
        """
        n = check_num_steps(num_inference_steps, self.num_train_timesteps)
        key = (n, *self._coefficient_parameters())
        if key not in self._plans:
            ts = self.timesteps(n).tolist()
            pairs = tuple(zip(ts, ts[1:] + [-1], strict=True))
            self._plans[key] = SamplingPlan(pairs, tuple(self.coefficients(pairs)))
        return self._plans[key]

    def _coefficient_parameters(self) -> tuple[object, ...]:
        """Attributes besides the schedule that :meth:`transition_coefficients` reads."""
        return ()

    # -------------------------------------------------------------------- step
    def apply_step(
        self, model_output: Tensor, sample: Tensor, c: StepCoefficients, noise: Tensor | None
    ) -> StepOutput:
        """The update of the module docstring with given noise: no randomness, no checks.

        Args:
            model_output: ``(B, ...)`` eps or x_0 prediction.
            sample: ``(B, ...)`` ``x_t``.
            c: the step's coefficients (from :meth:`coefficients` or :meth:`plan`).
            noise: ``(B, ...)`` ``z`` (from :meth:`draw_noise`), or None when ``c.std == 0``.
        """
        if self.prediction_type == "epsilon":
            pred_x0 = c.x0_from_xt * sample - c.x0_from_eps * model_output
        else:
            pred_x0 = model_output
        if self.clip_sample:
            pred_x0 = pred_x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        prev = c.coef_x0 * pred_x0 + c.coef_xt * sample
        if noise is not None:
            prev = prev + c.std * noise
        return StepOutput(prev, pred_x0)

    def draw_noise(
        self, shape: Sequence[int], num_inference_steps: int,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, init_noise: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor | None]]:
        """All the randomness of one reverse loop, drawn up front: the start and the step noises.

        Args: as in :meth:`sample`.

        Returns:
            ``(x, noises)``: the starting ``x_{T-1}`` ``(B, ...)`` (``init_noise`` if given, else
            drawn first) and, per step of :meth:`plan`, its ``z`` ``(B, ...)`` drawn in step order,
            or None for a deterministic step (nothing drawn).
        """
        plan = self.plan(num_inference_steps)
        x = draw_start_noise(shape, generator, device, dtype, init_noise)
        like = {"generator": generator, "device": x.device, "dtype": x.dtype}
        return x, [torch.randn(x.shape, **like) if c.std > 0.0 else None for c in plan.steps]

    def run(
        self, denoise_fn: DenoiseFn, x: Tensor, plan: SamplingPlan, noises: Sequence[Tensor | None]
    ) -> Tensor:
        """The reverse loop itself, without randomness: ``x (B, ...) -> (B, ...)``.

        ``plan`` from :meth:`plan`, ``noises`` from :meth:`draw_noise`; traceable by
        ``torch.compile`` (no host reads).
        """
        for (t, _), c, z in zip(plan.pairs, plan.steps, noises, strict=True):
            t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
            out = denoise_fn(x, t_batch)
            check_output(out, x)
            x = self.apply_step(out, x, c, z).prev_sample
        return x

    def sample(
        self, denoise_fn: DenoiseFn, shape: Sequence[int], num_inference_steps: int,
        generator: torch.Generator | None = None, device: torch.device | str | None = None,
        dtype: torch.dtype | None = None, init_noise: Tensor | None = None,
    ) -> Tensor:
        """Run the reverse process from ``N(0, I)`` noise to a sample.

        :meth:`draw_noise` then :meth:`run`: all noise is drawn from ``generator`` before the first
        model call (start, then each noisy step in order), so a denoiser that draws random numbers
        itself does not shift the sampler's. Gradients are not disabled here; wrap the call in
        ``torch.no_grad()`` for inference.

        Args:
            denoise_fn: ``(x_t (B, ...), t (B,) int64) -> model_output (B, ...)``.
            shape: ``(B, ...)`` shape of the samples.
            num_inference_steps: number of model evaluations, in ``[1, T]``.
            generator: RNG on ``device`` for the initial and step noise; None: global RNG.
            device: defaults to init_noise's device, else the CPU.
            dtype: defaults to init_noise's dtype, else float32.
            init_noise: optional ``(B, ...)`` starting ``x_{T-1}`` (not modified); drawn from
                ``generator`` otherwise.

        Returns:
            ``(B, ...)`` samples.
        """
        x, noises = self.draw_noise(shape, num_inference_steps, generator, device, dtype, init_noise)
        return self.run(denoise_fn, x, self.plan(num_inference_steps), noises)


class DDPMSampler(Sampler):
    """Ancestral sampling (Ho et al. 2020), correctly respaced for fewer steps.

    With all T steps this is the classic DDPM. For a stride ``t -> t_prev`` it uses the betas of
    the respaced chain (Nichol & Dhariwal 2021, sec. 4), recomputed from ``alphas_cumprod``:
    ``alpha' = ab_t / ab_prev``, ``beta' = 1 - alpha'``, then the posterior
    ``q(x_prev | x_t, x_0)`` of that chain::

        coef_x0 = sqrt(ab_prev) beta' / (1 - ab_t)
        coef_xt = sqrt(alpha') (1 - ab_prev) / (1 - ab_t)
        std^2   = beta' (1 - ab_prev) / (1 - ab_t)

    The variance is the posterior ("fixed_small") one, diffusers' default and what the original
    Diffusion Policy uses; it is 0 on the final step, which returns the x_0 estimate.
    """

    def transition_coefficients(
        self, alpha_bar_t: Tensor, alpha_bar_prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """See :meth:`Sampler.transition_coefficients` and the class docstring."""
        alpha = alpha_bar_t / alpha_bar_prev
        beta = 1.0 - alpha
        one_minus_ab = 1.0 - alpha_bar_t
        coef_x0 = alpha_bar_prev.sqrt() * beta / one_minus_ab
        coef_xt = alpha.sqrt() * (1.0 - alpha_bar_prev) / one_minus_ab
        std = (beta * (1.0 - alpha_bar_prev) / one_minus_ab).sqrt()
        return coef_x0, coef_xt, std


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12): ``x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev - std^2) eps + std z``.

    ``std = eta * sqrt((1 - ab_prev) / (1 - ab_t)) * sqrt(1 - ab_t / ab_prev)``; ``eta = 0`` is
    deterministic (no noise is drawn), ``eta = 1`` gives exactly the respaced DDPM coefficients.
    With ``eps = (x_t - sqrt(ab_t) x0_hat) / sqrt(1 - ab_t)`` this is ``coef_xt = sqrt(1 - ab_prev
    - std^2) / sqrt(1 - ab_t)`` and ``coef_x0 = sqrt(ab_prev) - coef_xt * sqrt(ab_t)``.

    Args:
        eta: in [0, 1]; other args as in :class:`Sampler`.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction_type: PredictionType = "epsilon",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        eta: float = 0.0,
    ) -> None:
        super().__init__(schedule, prediction_type, clip_sample, clip_sample_range)
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must lie in [0, 1]; got {eta}")
        self.eta = float(eta)

    def _extra_repr(self) -> str:
        return f", eta={self.eta}"

    def _coefficient_parameters(self) -> tuple[object, ...]:
        return (self.eta,)

    def transition_coefficients(
        self, alpha_bar_t: Tensor, alpha_bar_prev: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """See :meth:`Sampler.transition_coefficients` and the class docstring."""
        one_minus_ab = 1.0 - alpha_bar_t
        var = (
            self.eta**2
            * (1.0 - alpha_bar_prev)
            / one_minus_ab
            * (1.0 - alpha_bar_t / alpha_bar_prev)
        )
        # 1 - ab_prev - var >= 0 holds exactly for eta <= 1; clamp only float64 round-off.
        coef_xt = (1.0 - alpha_bar_prev - var).clamp(min=0.0).sqrt() / one_minus_ab.sqrt()
        coef_x0 = alpha_bar_prev.sqrt() - coef_xt * alpha_bar_t.sqrt()
        return coef_x0, coef_xt, var.sqrt()
