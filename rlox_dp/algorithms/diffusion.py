"""Diffusion Policy (Chi et al., RSS 2023): denoise a chunk of actions conditioned on observations.

Training draws a timestep ``t ~ U{0..T-1}`` and noise ``eps ~ N(0, I)`` per window, forms
``x_t = sqrt(abar_t) a + sqrt(1 - abar_t) eps`` and regresses the denoiser's output on ``eps``
(``prediction_type="epsilon"``) or on ``a`` (``"sample"``), masking padded actions. Inference
encodes the observation window once, runs the sampler (DDPM or DDIM) from ``N(0, I)`` and executes
``n_action_steps`` actions of the chunk starting at the current step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal

import gymnasium as gym
import torch

from rlox_dp.acceleration import Acceleration, accelerate
from rlox_dp.algorithms.base import Algorithm, PolicyConfig, register_algorithm
from rlox_dp.algorithms.bc import masked_mse
from rlox_dp.algorithms.observation import ObservationEncoder
from rlox_dp.buffers import Batch, Normalizer
from rlox_dp.config import ConfigError
from rlox_dp.diffusion import NoiseSchedule, Sampler, make_sampler, make_schedule
from rlox_dp.distributed import GlobalBatch
from rlox_dp.networks import TransformerForDiffusion, build_denoiser
from rlox_dp.networks.unet1d import horizon_multiple

__all__ = ["DiffusionConfig", "DiffusionPolicy"]

#: the transformer denoiser's AdamW settings, the original repo's
#: (``train_diffusion_transformer_lowdim_pusht_workspace.yaml``; the U-Net and MLP keep
#: ``PolicyConfig.training_defaults()``, its ``train_diffusion_unet_*`` settings).
_TRANSFORMER_TRAINING_DEFAULTS: dict[str, Any] = {
    "adam_betas": (0.9, 0.95), "weight_decay": 0.1, "lr_warmup_steps": 1000,
}


@dataclasses.dataclass
class DiffusionConfig(PolicyConfig):
    """Diffusion Policy options (names follow LeRobot's ``DiffusionConfig``; rlox names are aliases).

    Attributes:
        denoiser: ``"unet"`` (1-D conditional U-Net, the paper's CNN variant, DP-C),
            ``"transformer"`` (the paper's time-series diffusion transformer, DP-T) or ``"mlp"``.
        down_dims, kernel_size, n_groups, diffusion_step_embed_dim, use_film_scale_modulation:
            U-Net options; ``horizon`` must be divisible by ``2 ** (len(down_dims) - 1)``.
        hidden_dim, n_layers: MLP denoiser options (rlox's ``hidden_dim``).
        n_layer, n_head, n_emb, p_drop_emb, p_drop_attn, causal_attn, time_as_cond,
            n_cond_layers: transformer options (``TransformerForDiffusion``), defaults from the
            original's PushT low-dim config.
        noise_scheduler_type: sampler used at inference, ``"DDPM"``, ``"DDIM"`` or
            ``"DPMSolver++"`` (deterministic 2nd-order multistep, ``rlox_dp.diffusion.dpm_solver``).
        num_train_timesteps: diffusion steps ``T`` (rlox: ``n_diffusion_steps``).
        beta_schedule: ``"squaredcos_cap_v2"`` (original repo), ``"cosine"`` or ``"linear"``
            (rlox: ``noise_schedule``).
        beta_start, beta_end: linear schedule endpoints.
        prediction_type: ``"epsilon"`` (noise) or ``"sample"`` (clean actions).
        clip_sample, clip_sample_range: clamp the predicted clean chunk to ``±range`` while sampling.
        num_inference_steps: sampler steps; ``None`` uses all ``T`` (rlox: ``n_inference_steps``).
        ddim_eta: DDIM stochasticity (0 = deterministic).
        vision options: ``crop_shape``, ``crop_is_random``, ``resize_shape``,
            ``spatial_softmax_num_keypoints``, ``use_separate_rgb_encoder_per_camera``,
            ``use_group_norm``, ``vision_backbone`` (``"resnet18"``: the paper's, or ``"compact"``:
            a small conv net ~10x cheaper to train; both from scratch, see
            ``rlox_dp.networks.encoders``), ``vision_precision`` (``"float32"``; ``"bfloat16"``:
            the encoder trunk under bf16 autocast with channels-last input; ``"auto"``: bf16
            where the device has native bf16).
    """

    denoiser: Literal["unet", "mlp", "transformer"] = "unet"
    down_dims: tuple[int, ...] = (256, 512, 1024)
    kernel_size: int = 5
    n_groups: int = 8
    diffusion_step_embed_dim: int = 128
    use_film_scale_modulation: bool = True
    hidden_dim: int = 256
    n_layers: int = 4
    n_layer: int = 8
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.01
    causal_attn: bool = True
    time_as_cond: bool = True
    n_cond_layers: int = 0
    noise_scheduler_type: Literal["DDPM", "DDIM", "DPMSolver++"] = "DDPM"
    num_train_timesteps: int = 100
    beta_schedule: Literal["squaredcos_cap_v2", "cosine", "linear"] = "squaredcos_cap_v2"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    num_inference_steps: int | None = None
    ddim_eta: float = 0.0
    vision_backbone: Literal["resnet18", "compact"] = "resnet18"
    vision_precision: Literal["auto", "float32", "bfloat16"] = "float32"
    crop_shape: tuple[int, int] | None = (84, 84)
    crop_is_random: bool = True
    resize_shape: tuple[int, int] | None = None
    spatial_softmax_num_keypoints: int = 32
    use_separate_rgb_encoder_per_camera: bool = False
    use_group_norm: bool = True
    pretrained_backbone_weights: str | None = None

    ALIASES: ClassVar[dict[str, str]] = {
        **PolicyConfig.ALIASES,
        "n_diffusion_steps": "num_train_timesteps",
        "noise_schedule": "beta_schedule",
        "n_inference_steps": "num_inference_steps",
        "sampler": "noise_scheduler_type",
        "noise_scheduler": "noise_scheduler_type",
        "denoiser_type": "denoiser",
    }

    def training_defaults(self) -> dict[str, Any]:
        """The original's AdamW settings for the denoiser: :class:`PolicyConfig`'s for the U-Net
        and MLP; betas (0.9, 0.95), weight decay 0.1 (on the weights of linear and attention
        layers only) and 1000 warmup steps for the transformer."""
        defaults = super().training_defaults()
        return {**defaults, **_TRANSFORMER_TRAINING_DEFAULTS} if self.denoiser == "transformer" else defaults

    def validate(self) -> None:
        super().validate()
        if self.denoiser == "transformer":
            self._validate_transformer()
        if self.denoiser == "unet":
            factor = horizon_multiple(self.down_dims)
            if self.horizon % factor != 0:
                raise ConfigError(
                    f"config field 'horizon' must be divisible by 2**(len(down_dims) - 1) = {factor} "
                    f"(the U-Net halves it at every level but the last; down_dims={self.down_dims}), "
                    f"got {self.horizon}"
                )
            if any(d < 1 or d % self.n_groups for d in self.down_dims):
                raise ConfigError(
                    f"config field 'down_dims' must be positive multiples of n_groups "
                    f"({self.n_groups}), got {self.down_dims}"
                )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"config field 'kernel_size' must be odd and >= 1, got {self.kernel_size}")
        for name in ["n_groups", "diffusion_step_embed_dim", "hidden_dim", "n_layers",
                     "num_train_timesteps", "spatial_softmax_num_keypoints"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.num_inference_steps is None:
            self.num_inference_steps = self.num_train_timesteps
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(
                f"config field 'num_inference_steps' must be in [1, num_train_timesteps = "
                f"{self.num_train_timesteps}], got {self.num_inference_steps}"
            )
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ConfigError(
                f"config fields 'beta_start' and 'beta_end' must satisfy 0 < beta_start <= beta_end "
                f"< 1, got {self.beta_start}, {self.beta_end}"
            )
        if self.clip_sample_range <= 0:
            raise ConfigError(f"config field 'clip_sample_range' must be > 0, got {self.clip_sample_range}")
        if not 0.0 <= self.ddim_eta <= 1.0:
            raise ConfigError(f"config field 'ddim_eta' must be in [0, 1] (0: deterministic DDIM, 1: "
                              f"DDPM-like noise), got {self.ddim_eta}")
        if self.diffusion_step_embed_dim < 4 or self.diffusion_step_embed_dim % 2:
            raise ConfigError(f"config field 'diffusion_step_embed_dim' must be even and >= 4 (sin and "
                              f"cos halves of the timestep embedding), got {self.diffusion_step_embed_dim}")
        for name in ["crop_shape", "resize_shape"]:
            if getattr(self, name) is not None and min(getattr(self, name)) < 1:
                raise ConfigError(f"config field {name!r} must hold positive sizes or be None, got "
                                  f"{getattr(self, name)}")
        if self.pretrained_backbone_weights is not None:
            raise ConfigError(
                "config field 'pretrained_backbone_weights' must be None: rlox_dp never downloads "
                f"weights (the backbone trains from scratch), got {self.pretrained_backbone_weights!r}"
            )

    def _validate_transformer(self) -> None:
        """The transformer fields (``denoiser="transformer"``)."""
        for name in ["n_layer", "n_head", "n_emb"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.n_emb % 2 or self.n_emb % self.n_head:
            raise ConfigError(
                f"config field 'n_emb' must be even and divisible by n_head ({self.n_head}), "
                f"got {self.n_emb}"
            )
        if self.n_cond_layers < 0:
            raise ConfigError(f"config field 'n_cond_layers' must be >= 0, got {self.n_cond_layers}")
        for name in ["p_drop_emb", "p_drop_attn"]:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"config field {name!r} must be in [0, 1), got {getattr(self, name)}")
        if not self.time_as_cond:
            raise ConfigError(
                "config field 'time_as_cond' must be True: the policy conditions on observations, "
                "and the original's time-as-input (encoder-only) variant takes none"
            )


@register_algorithm("diffusion")
class DiffusionPolicy(Algorithm):
    """Diffusion Policy with a U-Net or MLP denoiser and global observation conditioning."""

    config_class: ClassVar[type[PolicyConfig]] = DiffusionConfig
    config: DiffusionConfig

    def __init__(
        self,
        config: DiffusionConfig,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Box,
        normalizer: Normalizer,
    ) -> None:
        super().__init__(config, observation_space, action_space, normalizer)
        self.obs_encoder = ObservationEncoder(
            observation_space,
            config.n_obs_steps,
            {
                "crop_shape": config.crop_shape,
                "crop_is_random": config.crop_is_random,
                "resize_shape": config.resize_shape,
                "spatial_softmax_num_keypoints": config.spatial_softmax_num_keypoints,
                "share_encoder": not config.use_separate_rgb_encoder_per_camera,
                "use_group_norm": config.use_group_norm,
                "backbone": config.vision_backbone,
                "precision": config.vision_precision,
            },
        )
        if config.denoiser == "unet":
            options = dict(
                down_dims=config.down_dims,
                kernel_size=config.kernel_size,
                n_groups=config.n_groups,
                diffusion_step_embed_dim=config.diffusion_step_embed_dim,
                use_film_scale_modulation=config.use_film_scale_modulation,
            )
        elif config.denoiser == "transformer":
            options = dict(
                n_obs_steps=config.n_obs_steps, n_layer=config.n_layer, n_head=config.n_head,
                n_emb=config.n_emb, p_drop_emb=config.p_drop_emb, p_drop_attn=config.p_drop_attn,
                causal_attn=config.causal_attn, time_as_cond=config.time_as_cond,
                n_cond_layers=config.n_cond_layers,
            )
        else:
            options = dict(hidden_dim=config.hidden_dim, n_layers=config.n_layers)
        self.denoiser = build_denoiser(
            config.denoiser,
            action_dim=self.action_dim,
            horizon=config.horizon,
            cond_dim=self.obs_encoder.output_dim,
            **options,
        )
        self.schedule = make_schedule(
            config.beta_schedule, config.num_train_timesteps, config.beta_start, config.beta_end
        )
        self.sampler = self._build_sampler()
        #: inference fast paths, set by :func:`rlox_dp.acceleration.accelerate` (None: plain).
        self.acceleration: Acceleration | None = None

    def optimizer_param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """One group, except with the transformer: its two groups (``weight_decay`` on the
        weights of linear and attention layers, none on the rest) plus the other parameters (an
        image encoder) at the original's obs-encoder decay, as the original's policies."""
        if not isinstance(self.denoiser, TransformerForDiffusion):
            return super().optimizer_param_groups(weight_decay)
        groups = self.denoiser.optim_groups(weight_decay)
        others = [p for name, p in self.named_parameters() if not name.startswith("denoiser.")]
        if others:
            groups.append({"params": others,
                           "weight_decay": TransformerForDiffusion.OBS_ENCODER_WEIGHT_DECAY})
        return groups

    def compile_networks(self, **compile_kwargs: Any) -> None:
        """Compile the networks in place and switch the inference fast paths on
        (:func:`~rlox_dp.acceleration.accelerate`), with the whole denoising loop compiled for
        samplers with few steps; outputs match the eager ones."""
        accelerate(self, compile_kwargs)  # before compiling: the graphs see the chosen layers
        super().compile_networks(**compile_kwargs)

    def _build_sampler(self, config: DiffusionConfig | None = None) -> Sampler:
        config = config if config is not None else self.config
        return make_sampler(
            config.noise_scheduler_type,
            self.schedule,
            prediction_type=config.prediction_type,
            clip_sample=config.clip_sample,
            clip_sample_range=config.clip_sample_range,
            **({"eta": config.ddim_eta} if config.noise_scheduler_type == "DDIM" else {}),
        )

    def configure_inference(
        self, noise_scheduler_type: str | None = None, num_inference_steps: int | None = None,
        ddim_eta: float | None = None,
    ) -> None:
        """Switch the sampler after training, e.g. to DDIM or DPMSolver++ with 10 steps.

        Validated like the config (errors name the field); ``None`` keeps the current value. All or
        nothing: on an error the config and the sampler stay as they were.
        """
        changes = {k: v for k, v in {"noise_scheduler_type": noise_scheduler_type,
                                     "num_inference_steps": num_inference_steps,
                                     "ddim_eta": ddim_eta}.items() if v is not None}
        config = self.config.replace(**changes)
        sampler = self._build_sampler(config)
        self.config, self.sampler = config, sampler

    def _schedule_on(self, device: torch.device) -> NoiseSchedule:
        """The schedule's tables on ``device`` (moved once and cached: no copy per step)."""
        if self.schedule.device != device:
            self.schedule = self.schedule.to(device)
        return self.schedule

    def compute_loss(
        self, batch: Batch, generator: torch.Generator | None = None, *, global_batch: GlobalBatch | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoising loss of a normalized batch: actions ``(B, H, D_act)``, padded actions masked."""
        actions = batch.action
        cond = self.obs_encoder(batch.obs, generator)
        b = actions.shape[0]
        total, start = global_batch or (b, 0)
        noise = torch.randn((total, *actions.shape[1:]), generator=generator, device=actions.device,
                            dtype=actions.dtype)[start : start + b]
        t = torch.randint(0, self.config.num_train_timesteps, (total,), generator=generator,
                          device=actions.device)[start : start + b]
        noisy = self._schedule_on(actions.device).add_noise(actions, noise, t)
        pred = self.denoiser(noisy, t, cond)
        target = noise if self.config.prediction_type == "epsilon" else actions
        loss = masked_mse(pred, target, batch.action_is_pad)
        return loss, {"mse": loss.detach()}

    def sample_chunk(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None,
        num_inference_steps: int | None = None, shared_noise: bool = False,
    ) -> torch.Tensor:
        """Normalized obs ``(B, T_o, ...)`` -> a whole normalized chunk ``(B, H, D_act)``.

        The observation encoding is computed once; the sampler's plan (its timesteps and step
        coefficients) goes to the denoiser, which precomputes what depends only on the encoding
        and the timesteps (:meth:`Denoiser.conditioned`), and to the sampler's loop.
        ``shared_noise``: draw the start and step noises for one row and use them for every row
        (deterministic inference: a row's chunk does not depend on the other rows).
        """
        cond = self.obs_encoder(obs, generator)
        shape = (cond.shape[0], self.config.horizon, self.action_dim)
        n_steps = num_inference_steps or self.config.num_inference_steps
        plan = self.sampler.plan(n_steps)
        drawn = (1, *shape[1:]) if shared_noise else shape
        x, noises = self.sampler.draw_noise(drawn, n_steps, generator, cond.device, cond.dtype)
        if shared_noise:
            x = x.expand(shape).contiguous()
            noises = [None if z is None else z.expand(shape).contiguous() for z in noises]
        if self.acceleration is not None:
            return self.acceleration.sample(self, cond, x, plan, noises)
        denoise = self.denoiser.conditioned(cond, plan.timesteps)
        return self.sampler.run(denoise, x, plan, noises)

    def predict_normalized_actions(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None,
        shared_noise: bool = False,
    ) -> torch.Tensor:
        """``(B, T_o, ...)`` per key -> executed slice ``(B, n_action_steps, D_act)``, normalized."""
        start = self.config.n_obs_steps - 1
        chunk = self.sample_chunk(obs, generator, shared_noise=shared_noise)
        return chunk[:, start : start + self.config.n_action_steps]

    def predict_normalized_actions_fixed_noise(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """The executed slice with one noise draw shared by every row (see ``Algorithm.fixed_noise``)."""
        return self.predict_normalized_actions(obs, generator, shared_noise=True)
