"""Consistency distillation of a trained Diffusion Policy: algorithm ``"consistency"``.

    Trainer("consistency", env=..., config={"teacher": "runs/.../last.safetensors"}).train()

After Consistency Policy (Prasad et al., RSS 2024), which distills a Diffusion Policy teacher into
a student that acts in 1-3 network evaluations. The student ``f(x_t, t)`` predicts the clean chunk
(x0 parametrization) and is trained so that ``f`` is constant along the teacher's
probability-flow ODE trajectories (Song et al. 2023, consistency distillation):

    t ~ U{0..T-1},  s = t - distillation_stride  (s < 0: the clean end),
    x_t = sqrt(ab_t) a + sqrt(1 - ab_t) eps,
    x_s = one ODE step of the frozen teacher from x_t to s (teacher_ode_step; its x0 if s < 0),
    L   = ||f(x_t, t) - sg f(x_s, s)||^2  +  dsm_weight ||f(x_t, t) - a||^2

(``sg``: stop-gradient; both terms mean squared errors over real, unpadded actions). Sampling
is multistep consistency sampling (:class:`~rlox_dp.diffusion.ConsistencySampler`) with
``num_inference_steps`` evaluations, set at inference like Diffusion Policy's.

What follows Consistency Policy: the teacher is a trained Diffusion Policy checkpoint and the
student keeps its windows, network, noise schedule and normalization (a mismatch is a clear
error) and is warm-started from its weights (the repo's strong recommendation); the consistency
target is the online student with stop-gradient (their ``initial_ema_decay = 0``, as in improved
consistency training) rather than a slow EMA; a denoising (DSM) term is added to the consistency
term (their Eq. 8, weight ``dsm_weight``: 0.1 by default, not their 1, which averaged the
two modes of BimodalPoint-v0 in one step); the initial sample variance can be reduced
(``init_noise_scale``; they start from ``N(0, I)`` instead of ``N(0, 80^2 I)``, which in this
variance-preserving parametrization is a scale of about 1/80); chaining timesteps are an even
partition of the schedule (their ``chaining_times = ['D', 27, 54]`` of 80 bins).

Where it differs: the objective is consistency distillation (CD) with ``f(x_t, t)``, not their
consistency-trajectory (CTM) objective with a two-time network ``G(x_t, t, s)`` (that would need
new denoiser inputs); the teacher is this library's discrete-time VP diffusion (any
``prediction_type``), not an EDM model, and its ODE step is a second-order exponential-integrator
step in the data prediction (Heun-like, ``teacher_solver="heun"``; DDIM optional) instead of EDM's
Heun;
the boundary ``f(x, clean) = x`` is imposed through the ``s < 0`` training pairs (target: the
teacher's clean estimate) and the DSM term, not through EDM's skip scalings; the DSM term uses
the same noisy sample as the consistency term (no second forward pass).
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import gymnasium as gym
import torch

from rlox_dp.algorithms.base import PolicyConfig, register_algorithm
from rlox_dp.algorithms.bc import masked_mse
from rlox_dp.algorithms.diffusion import DiffusionConfig, DiffusionPolicy
from rlox_dp.algorithms.flow import global_batch_draws
from rlox_dp.buffers import Batch, Normalizer
from rlox_dp.checkpoint import CheckpointError, load_checkpoint, space_from_json
from rlox_dp.config import ConfigError
from rlox_dp.diffusion import DDIMSampler, NoiseSchedule
from rlox_dp.diffusion.consistency_sampler import ConsistencySampler
from rlox_dp.diffusion.samplers import PredictionType
from rlox_dp.distributed import GlobalBatch

__all__ = ["ConsistencyConfig", "ConsistencyPolicy", "load_teacher", "teacher_ode_step",
           "teacher_step_table"]

#: windows and normalization (PolicyConfig fields) that a student shares with its teacher.
_SHARED_BASE_FIELDS = ("n_obs_steps", "horizon", "n_action_steps", "obs_normalization",
                       "action_normalization")
#: DiffusionConfig fields that belong to the student: its sampler and its parametrization.
_STUDENT_FIELDS = ("noise_scheduler_type", "num_inference_steps", "ddim_eta", "prediction_type")


def inherited_fields() -> list[str]:
    """Config fields a student takes from its teacher: windows, normalization, observation
    encoder, denoiser architecture and noise schedule (every DiffusionConfig field that is not a
    training or inference setting)."""
    base = {f.name for f in dataclasses.fields(PolicyConfig)}
    return [f.name for f in dataclasses.fields(DiffusionConfig)
            if (f.name not in base or f.name in _SHARED_BASE_FIELDS) and f.name not in _STUDENT_FIELDS]


def _read_teacher(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``load_checkpoint(path)``, errors naming the config field; the teacher must be ``"diffusion"``."""
    try:
        tensors, meta = load_checkpoint(path)
    except (FileNotFoundError, CheckpointError) as err:
        raise ConfigError(f"config field 'teacher': {err}") from None
    if meta.get("algorithm") != "diffusion":
        raise ConfigError(
            f"config field 'teacher': {path!r} is a {meta.get('algorithm')!r} checkpoint; "
            "consistency distillation needs a 'diffusion' (Diffusion Policy) teacher"
        )
    return tensors, meta


def _teacher_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The teacher's policy config values from its checkpoint header, errors naming the field."""
    from rlox_dp.training.config import policy_values_from_header

    try:
        return policy_values_from_header(DiffusionConfig, meta)
    except ConfigError as err:
        raise ConfigError(f"config field 'teacher': its checkpoint's config: {err}") from None


@dataclasses.dataclass
class ConsistencyConfig(DiffusionConfig):
    """Consistency distillation options (module docstring); the rest is the teacher's.

    Attributes:
        teacher: path of the teacher's checkpoint (a ``"diffusion"`` run's ``.safetensors``).
            Needed to train: a new config whose teacher file is missing is an error. A saved
            student (its config holds ``teacher_config``) whose teacher file is gone loads with a
            warning and can act but not train; ``None`` builds such an inference-only student.
        teacher_config: the teacher's config, read from the checkpoint when ``None``. The
            fields of :func:`inherited_fields` (windows, normalization, network, noise schedule)
            default to the teacher's values and must equal them.
        distillation_stride: training timesteps spanned by the teacher's ODE step from ``t`` to
            ``s = t - stride`` (``T / stride`` steps per trajectory).
        teacher_solver: that step's solver, ``"heun"`` (2nd order, 2 teacher calls; Consistency
            Policy's) or ``"ddim"`` (1st order, 1 call); see :func:`teacher_ode_step`.
        dsm_weight: weight of the denoising term ``||f(x_t, t) - a||^2`` (0 disables it). It
            pulls one-step outputs toward the mean of the modes: on BimodalPoint-v0 (1500 steps,
            stride 10) one step succeeded in 0.54 of 50 episodes at Consistency Policy's weight 1
            and in 0.88 at 0, hence the default 0.1 (``benchmarks/bimodal_fewstep.py --models
            consistency --teacher CKPT --stride 10 --dsm-weight W``).
        warm_start: initialize the student with the teacher's (EMA) weights.
        init_noise_scale: std of the sampler's starting noise, in ``(0, 1]`` (module docstring).
        noise_scheduler_type: ``"Consistency"`` (multistep consistency sampling).
        num_inference_steps: network evaluations per chunk (default 1).
        prediction_type: ``"sample"``: the student predicts the clean chunk.
    """

    noise_scheduler_type: Literal["Consistency"] = "Consistency"  # type: ignore[assignment]
    num_inference_steps: int | None = 1
    prediction_type: Literal["sample"] = "sample"  # type: ignore[assignment]
    teacher: str | None = None
    teacher_config: dict[str, Any] | None = None
    distillation_stride: int = 5
    teacher_solver: Literal["ddim", "heun"] = "heun"
    dsm_weight: float = 0.1
    warm_start: bool = True
    init_noise_scale: float = 1.0

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None, **overrides: Any) -> ConsistencyConfig:
        """Like :meth:`Config.from_dict`, with the teacher's values under the inherited fields."""
        merged = cls.resolve_aliases({**(values or {}), **overrides})
        if merged.get("teacher_config") is None and merged.get("teacher") is not None:
            merged["teacher_config"] = _teacher_config(_read_teacher(os.fspath(merged["teacher"]))[1])
        teacher_config = merged.get("teacher_config")
        if isinstance(teacher_config, dict):
            for name in inherited_fields():
                if name in teacher_config:
                    merged.setdefault(name, teacher_config[name])
        return cls(**merged)

    def validate(self) -> None:
        super().validate()
        if self.teacher is not None and self.teacher_config is None:
            self.teacher_config = _teacher_config(_read_teacher(self.teacher)[1])
        if self.teacher_config is not None:
            from rlox_dp.training.config import split_config

            # a student saved before the policy/training split holds its teacher's flat config
            self.teacher_config = split_config(DiffusionConfig, self.teacher_config)[0]
            teacher = DiffusionConfig.from_dict(self.teacher_config)
            for name in inherited_fields():
                if getattr(self, name) != getattr(teacher, name):
                    raise ConfigError(
                        f"config field {name!r} is {getattr(self, name)!r} but the teacher's is "
                        f"{getattr(teacher, name)!r}: a consistency student keeps its teacher's "
                        "windows, normalization, network and noise schedule"
                    )
        if not 1 <= self.distillation_stride < self.num_train_timesteps:
            raise ConfigError(
                f"config field 'distillation_stride' must lie in [1, num_train_timesteps = "
                f"{self.num_train_timesteps}), got {self.distillation_stride}"
            )
        if not (self.dsm_weight >= 0 and math.isfinite(self.dsm_weight)):
            raise ConfigError(f"config field 'dsm_weight' must be >= 0, got {self.dsm_weight}")
        if not 0.0 < self.init_noise_scale <= 1.0:
            raise ConfigError(f"config field 'init_noise_scale' must lie in (0, 1], got {self.init_noise_scale}")


def load_teacher(
    path: str, observation_space: gym.spaces.Dict, action_space: gym.spaces.Box,
    normalizer: Normalizer,
) -> DiffusionPolicy:
    """The frozen teacher policy (EMA weights when saved) of checkpoint ``path``, in eval mode.

    Raises:
        ConfigError: ``path`` is missing, not a checkpoint or not a ``"diffusion"`` one.
        ValueError: its spaces or normalization statistics differ from the student's.
    """
    tensors, meta = _read_teacher(path)
    spaces = space_from_json(meta["observation_space"]), space_from_json(meta["action_space"])
    if spaces != (observation_space, action_space):
        raise ValueError(
            f"teacher {path!r} was trained with observation/action spaces {spaces[0]}, {spaces[1]}; "
            f"the student's env has {observation_space}, {action_space}"
        )
    teacher = DiffusionPolicy(DiffusionConfig.from_dict(_teacher_config(meta)), observation_space,
                              action_space, Normalizer.from_spec(meta["normalizer"]))
    prefix = "ema/" if any(k.startswith("ema/") for k in tensors) else "policy/"
    teacher.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    if teacher.normalizer.spec() != normalizer.spec():
        raise ValueError(
            f"the student's normalization {normalizer.spec()} differs from teacher {path!r}'s "
            f"{teacher.normalizer.spec()}"
        )
    theirs = teacher.normalizer.state_dict()
    # An unfitted normalizer (Trainer.load builds one from the spec, then loads the student's
    # checkpoint into it) has no statistics to compare yet.
    fitted = getattr(normalizer, "_fitted", True)
    for name, ours in (normalizer.state_dict().items() if fitted else ()):
        if not torch.allclose(ours.cpu().float(), theirs[name].float(), rtol=1e-5, atol=1e-6):
            raise ValueError(
                f"the demonstrations' normalization statistics ({name!r}) differ from teacher "
                f"{path!r}'s (max difference {float((ours.cpu() - theirs[name]).abs().max()):.3g}): "
                "distill on the teacher's demonstrations"
            )
    return teacher.eval().requires_grad_(False)


def teacher_step_table(
    schedule: NoiseSchedule, stride: int, prediction_type: PredictionType
) -> torch.Tensor:
    """``(T, 6)`` float64 coefficients of the teacher's ODE step ``t -> s = t - stride`` (``s = -1``,
    the clean end, when ``t < stride``), one row per ``t``: the five
    :class:`~rlox_dp.diffusion.StepCoefficients` of DDIM (eta 0) for ``(t, s)``, then the weight
    ``alpha_s (h - 1 + e^{-h}) / h`` of the second-order term (0 when ``s = -1``), with
    ``h = lambda_s - lambda_t`` the step in half log-SNR (see :func:`teacher_ode_step`)."""
    T = schedule.num_train_timesteps
    pairs = [(t, t - stride if t >= stride else -1) for t in range(T)]
    first = torch.tensor(DDIMSampler(schedule, prediction_type, False, eta=0.0).coefficients(pairs),
                         dtype=torch.float64)
    ab = schedule.alphas_cumprod.detach().to("cpu", torch.float64)
    lam = 0.5 * (ab / (1.0 - ab)).log()
    t = torch.arange(T)
    s = (t - stride).clamp(min=0)
    h = lam[s] - lam[t]
    second = torch.where(t >= stride, ab[s].sqrt() * (h + torch.expm1(-h)) / h, torch.zeros(T, dtype=torch.float64))
    return torch.cat([first, second.unsqueeze(1)], dim=1)


def teacher_ode_step(
    denoise_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x_t: torch.Tensor,
    t: torch.Tensor,
    s: torch.Tensor,
    table: torch.Tensor,
    teacher_config: DiffusionConfig,
    solver: Literal["ddim", "heun"] = "heun",
) -> torch.Tensor:
    """One step of the teacher's probability-flow ODE from ``x_t`` at ``t`` to ``s``, per sample.

    With the teacher's clean estimates ``m_t`` (clipped as its sampler clips them):
    ``"ddim"``: ``x_s = coef_xt x_t + coef_x0 m_t`` (first order, exact for constant ``m``);
    ``"heun"``: the same predictor, then ``x_s += w (m_s - m_t)`` with ``m_s`` the estimate at the
    predicted ``x_s`` and ``w = alpha_s (h - 1 + e^{-h}) / h``, the exact integral of ``m`` interpolated
    linearly in ``lambda`` (second order, one more teacher call; DPM-Solver-2's idea with the
    end point, as EDM's Heun). Steps to the clean end (``s < 0``) are first order.

    Args:
        denoise_fn: the teacher's ``(x (B, H, D), k (B,)) -> (B, H, D)`` network output.
        x_t: ``(B, H, D)``; t, s: ``(B,)`` int64 with ``s = t - stride`` (``< 0``: clean end).
        table: :func:`teacher_step_table` for that stride, in ``x_t``'s dtype and device.
        teacher_config: the teacher's config (prediction type, clipping).
        solver: ``"ddim"`` or ``"heun"``.

    Returns:
        ``(B, H, D)``: ``x_s`` (the teacher's clean estimate where ``s < 0``).
    """
    shape = (-1, *([1] * (x_t.ndim - 1)))

    def clean_estimate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        out = denoise_fn(x, k)
        if teacher_config.prediction_type == "epsilon":
            out = table[k, 0].view(shape) * x - table[k, 1].view(shape) * out
        if teacher_config.clip_sample:
            out = out.clamp(-teacher_config.clip_sample_range, teacher_config.clip_sample_range)
        return out

    c = table[t]
    m_t = clean_estimate(x_t, t)
    x_s = c[:, 2].view(shape) * m_t + c[:, 3].view(shape) * x_t
    if solver == "heun":
        m_s = clean_estimate(x_s, s.clamp(min=0))
        x_s = x_s + c[:, 5].view(shape) * (m_s - m_t)  # weight 0 where s < 0
    return x_s


@register_algorithm("consistency")
class ConsistencyPolicy(DiffusionPolicy):
    """A consistency model distilled from a Diffusion Policy teacher (module docstring)."""

    config_class: ClassVar[type[PolicyConfig]] = ConsistencyConfig
    config: ConsistencyConfig

    def __init__(
        self,
        config: ConsistencyConfig,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Box,
        normalizer: Normalizer,
    ) -> None:
        super().__init__(config, observation_space, action_space, normalizer)
        teacher = None
        if config.teacher is not None and os.path.isfile(config.teacher):
            teacher = load_teacher(config.teacher, observation_space, action_space, normalizer)
            if config.warm_start:
                self.load_state_dict(teacher.state_dict())
        elif config.teacher is not None:  # a saved student elsewhere: its weights come next
            warnings.warn(
                f"consistency teacher {config.teacher!r} not found: this policy can act but not "
                "train", stacklevel=2,
            )
        # Not a submodule: no parameters to train, nothing in the student's checkpoints.
        object.__setattr__(self, "_teacher", teacher)
        self._teacher_steps: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Copies (the EMA model) leave the teacher out."""
        state = super().__getstate__()
        state["_teacher"] = None
        return state

    @property
    def teacher(self) -> DiffusionPolicy | None:
        """The frozen teacher (None for an inference-only student)."""
        return self._teacher

    def _build_sampler(self, config: ConsistencyConfig | None = None) -> ConsistencySampler:  # type: ignore[override]
        config = config if config is not None else self.config
        return ConsistencySampler(self.schedule, "sample", config.clip_sample,
                                  config.clip_sample_range, config.init_noise_scale)

    def configure_inference(  # type: ignore[override]
        self, noise_scheduler_type: str | None = None, num_inference_steps: int | None = None,
        ddim_eta: float | None = None, init_noise_scale: float | None = None,
    ) -> None:
        """Set the number of network evaluations per chunk (and the starting noise scale)."""
        changes = {k: v for k, v in {"noise_scheduler_type": noise_scheduler_type,
                                     "num_inference_steps": num_inference_steps,
                                     "ddim_eta": ddim_eta,
                                     "init_noise_scale": init_noise_scale}.items() if v is not None}
        config = self.config.replace(**changes)
        self.config, self.sampler = config, self._build_sampler(config)

    def _teacher_step_table(self, device: torch.device) -> torch.Tensor:
        """:func:`teacher_step_table` of this student's schedule and stride, on ``device``."""
        if self._teacher_steps is None or self._teacher_steps.device != device:
            self._teacher_steps = teacher_step_table(
                self.schedule, self.config.distillation_stride, self._teacher.config.prediction_type
            ).to(device)
        return self._teacher_steps

    def compute_loss(
        self, batch: Batch, generator: torch.Generator | None = None, *, global_batch: GlobalBatch | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Consistency + denoising loss of a normalized batch (module docstring)."""
        if self._teacher is None:
            raise RuntimeError("this consistency policy has no teacher (config.teacher is None): "
                               "it can act but not train")
        actions = batch.action
        teacher = self._teacher.to(actions.device)
        cond = self.obs_encoder(batch.obs, generator)
        noise, u = global_batch_draws(actions, generator, global_batch)
        T, stride = self.config.num_train_timesteps, self.config.distillation_stride
        t = (u * T).long().clamp(max=T - 1)
        s = t - stride
        x_t = self._schedule_on(actions.device).add_noise(actions, noise, t)
        with torch.no_grad():
            teacher_cond = teacher.obs_encoder(batch.obs)
            x_s = teacher_ode_step(
                lambda x, k: teacher.denoiser(x, k, teacher_cond), x_t, t, s,
                self._teacher_step_table(actions.device).to(actions.dtype), teacher.config,
                self.config.teacher_solver,
            )
            target = self.denoiser(x_s, s.clamp(min=0), cond.detach())
            target = torch.where((s >= 0).view(-1, *([1] * (actions.ndim - 1))), target, x_s)
        pred = self.denoiser(x_t, t, cond)
        consistency = masked_mse(pred, target, batch.action_is_pad)
        dsm = masked_mse(pred, actions, batch.action_is_pad)
        loss = consistency + self.config.dsm_weight * dsm
        return loss, {"consistency": consistency.detach(), "dsm": dsm.detach()}
