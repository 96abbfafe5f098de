"""The sampler registry: every reverse-process sampler by name (the shared registry rule: any
case, did-you-mean on a miss), and :func:`make_sampler`.

DDPM and DDIM are registered here; DPM-Solver++ and consistency sampling register themselves in
their own modules (importing :mod:`rlox_dp.diffusion` registers all of them).
"""

from __future__ import annotations

from rlox_dp.diffusion.samplers import DDIMSampler, DDPMSampler, Sampler
from rlox_dp.diffusion.schedules import NoiseSchedule
from rlox_dp.registry import Registry

__all__ = ["SAMPLER_REGISTRY", "available_samplers", "make_sampler"]

#: sampler name -> :class:`Sampler` subclass built by :func:`make_sampler` as ``cls(schedule, **kwargs)``.
SAMPLER_REGISTRY: Registry[type[Sampler]] = Registry("sampler")
SAMPLER_REGISTRY.register("ddpm", DDPMSampler)
SAMPLER_REGISTRY.register("ddim", DDIMSampler)


def available_samplers() -> list[str]:
    """Names accepted by :func:`make_sampler`, in registration order."""
    return SAMPLER_REGISTRY.names()


def make_sampler(name: str, schedule: NoiseSchedule, **kwargs: object) -> Sampler:
    """Build a sampler by name, case-insensitive (``"DDPM"`` / ``"DDIM"`` as in LeRobot configs,
    ``"DPMSolver++"``).

    Args:
        name: one of :func:`available_samplers`, any case.
        schedule: the training noise schedule.
        **kwargs: forwarded to the sampler (``prediction_type``, ``clip_sample``,
            ``clip_sample_range``; ``eta`` for DDIM; ``solver_order`` for DPM-Solver++).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {available_samplers()}; got {type(name).__name__}")
    return SAMPLER_REGISTRY.get(name)(schedule, **kwargs)
