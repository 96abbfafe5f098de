"""Diffusion math: noise schedules (forward process) and samplers (reverse process)."""

from __future__ import annotations

from rlox_dp.diffusion.consistency_sampler import ConsistencySampler
from rlox_dp.diffusion.dpm_solver import DPMSolverMultistepSampler
from rlox_dp.diffusion.plan import ReverseSampler, SamplingPlan
from rlox_dp.diffusion.sampler_registry import SAMPLER_REGISTRY, available_samplers, make_sampler
from rlox_dp.diffusion.samplers import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    Sampler,
    StepCoefficients,
    StepOutput,
)
from rlox_dp.diffusion.schedules import (
    PRIOR_MISMATCH_THRESHOLD,
    SCHEDULE_REGISTRY,
    SCHEDULES,
    NoiseSchedule,
    PriorMismatchWarning,
    available_schedules,
    make_schedule,
)

__all__ = [
    "ConsistencySampler",
    "PRIOR_MISMATCH_THRESHOLD",
    "SAMPLERS",
    "SAMPLER_REGISTRY",
    "SCHEDULES",
    "SCHEDULE_REGISTRY",
    "SamplingPlan",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverMultistepSampler",
    "NoiseSchedule",
    "PriorMismatchWarning",
    "ReverseSampler",
    "Sampler",
    "StepCoefficients",
    "StepOutput",
    "available_samplers",
    "available_schedules",
    "make_sampler",
    "make_schedule",
]
