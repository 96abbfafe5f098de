"""Diffusion math: noise schedules (forward process) and samplers (reverse process)."""

from __future__ import annotations

from rlox_dp.diffusion.consistency_sampler import ConsistencySampler
from rlox_dp.diffusion.dpm_solver import DPMSolverMultistepSampler
from rlox_dp.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    Sampler,
    StepCoefficients,
    StepOutput,
    make_sampler,
)
from rlox_dp.diffusion.schedules import (
    PRIOR_MISMATCH_THRESHOLD,
    SCHEDULES,
    NoiseSchedule,
    PriorMismatchWarning,
    make_schedule,
)

__all__ = [
    "ConsistencySampler",
    "PRIOR_MISMATCH_THRESHOLD",
    "SAMPLERS",
    "SCHEDULES",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverMultistepSampler",
    "NoiseSchedule",
    "PriorMismatchWarning",
    "Sampler",
    "StepCoefficients",
    "StepOutput",
    "make_sampler",
    "make_schedule",
]
