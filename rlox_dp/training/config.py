"""``TrainingConfig``: how a policy is trained (the run), apart from the policy's own config.

A policy config (``DiffusionConfig``, ``BCConfig`` ...: window, network, diffusion, vision,
normalization) is what a checkpoint needs to act; a :class:`TrainingConfig` is everything else of
a run: optimizer, learning-rate schedule, EMA, budget, batch size, logging, checkpoints, the
evaluation protocol, compilation, mixed precision, where the demonstrations live and how many the
built-in expert collects.

The optimizer fields some algorithms set differently (``lr``, ``adam_betas``, ``weight_decay``,
``lr_warmup_steps``, ``use_ema``) default to ``None``: the policy config's
``training_defaults()`` fills them (:meth:`TrainingConfig.resolved`), e.g. the transformer
denoiser's AdamW betas (0.9, 0.95). A value you set always wins.

    policy, training = build_configs(DiffusionConfig, {"horizon": 8, "lr": 3e-4})
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, Protocol, TypeVar

from rlox_dp.config import Config, ConfigError, split_by_owner
from rlox_dp.window import WINDOW_FIELDS

__all__ = [
    "EVALUATION_FIELDS",
    "TrainingConfig",
    "build_configs",
    "configs_from_header",
    "evaluation_protocol_from_header",
    "policy_values_from_header",
    "split_config",
]

P = TypeVar("P", bound=Config)

logger = logging.getLogger("rlox_dp")

#: the evaluation protocol's fields, recorded in policy files for ``rlox-dp eval``.
EVALUATION_FIELDS = ("n_eval_episodes", "n_eval_envs", "eval_seed")


class _HasTrainingDefaults(Protocol):
    def training_defaults(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class TrainingConfig(Config):
    """Optimization, EMA, budget, logging, checkpoints, evaluation and runtime of a training run.

    Attributes:
        batch_size: windows per gradient step (the global batch under torchrun).
        lr, adam_betas, adam_eps, weight_decay: AdamW settings; ``None`` (``lr``,
            ``adam_betas``, ``weight_decay``): the policy's default (``training_defaults()``).
        lr_scheduler: ``"cosine"`` (with linear warmup, the original repo's), ``"linear"``
            or ``"constant"`` (both with warmup).
        lr_warmup_steps: linear warmup length in gradient steps (``None``: the policy's default).
        grad_clip_norm: max global gradient norm; ``None`` disables clipping.
        use_ema / ema_*: exponential moving average of the weights with the original repo's power
            schedule ``decay = 1 - (1 + step / ema_inv_gamma) ** -ema_power`` clamped to
            ``[ema_min_decay, ema_max_decay]``; the EMA weights are the ones evaluated and acted with
            (``use_ema=None``: the policy's default, off for BC).
        total_steps: gradient steps of ``Trainer.train()``.
        log_every, checkpoint_every, eval_every: in gradient steps (0 disables periodic eval;
            periodic evaluation needs ``n_eval_episodes >= 1``).
        keep_last_n: step-numbered checkpoints kept in ``<log_dir>/checkpoints`` (older ones are
            deleted after each save; ``last.safetensors`` is always the newest); ``None`` keeps all.
        n_eval_episodes, n_eval_envs, eval_seed: evaluation protocol (episode j uses seed
            ``eval_seed + j``).
        n_demos: episodes collected from the built-in expert when no demos are given.
        compile_model: wrap the networks in ``torch.compile``.
        compile_mode: ``torch.compile`` mode: ``"default"``, ``"reduce-overhead"`` (CUDA graphs
            on a GPU: one graph launch per denoiser call) or ``"max-autotune"``.
        mixed_precision: ``"no"``, ``"bf16"`` (autocast to bfloat16, CPU or GPU) or ``"fp16"``
            (autocast to float16 with a gradient scaler; CUDA only). Weights, optimizer state and
            EMA stay float32.
        buffer_device: where the demonstration windows live: ``"auto"`` (the training device:
            no host-device copies at all) or ``"cpu"`` (host memory, for datasets larger than the
            GPU; each batch is copied through pinned memory with a non-blocking transfer).
    """

    batch_size: int = 256
    lr: float | None = None
    adam_betas: tuple[float, float] | None = None
    adam_eps: float = 1e-8
    weight_decay: float | None = None
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    lr_warmup_steps: int | None = None
    grad_clip_norm: float | None = 10.0
    use_ema: bool | None = None
    ema_power: float = 0.75
    ema_inv_gamma: float = 1.0
    ema_min_decay: float = 0.0
    ema_max_decay: float = 0.9999
    total_steps: int = 5000
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_last_n: int | None = 5
    eval_every: int = 0
    n_eval_episodes: int = 20
    n_eval_envs: int = 4
    eval_seed: int = 0
    n_demos: int = 50
    compile_model: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    buffer_device: Literal["auto", "cpu"] = "auto"

    #: rlox's and LeRobot's names for the same settings.
    ALIASES: ClassVar[dict[str, str]] = {
        "learning_rate": "lr",
        "optimizer_lr": "lr",
        "optimizer_betas": "adam_betas",
        "optimizer_eps": "adam_eps",
        "optimizer_weight_decay": "weight_decay",
        "scheduler_name": "lr_scheduler",
        "scheduler_warmup_steps": "lr_warmup_steps",
        "grad_clip": "grad_clip_norm",
    }

    def validate(self) -> None:
        """Ranges of every field; a ``None`` left for the policy's default is not checked yet."""
        for name in ["batch_size", "total_steps", "log_every", "checkpoint_every", "n_eval_envs", "n_demos"]:
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ["eval_every", "n_eval_episodes", "eval_seed"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"config field {name!r} must be >= 0, got {getattr(self, name)}")
        if self.lr_warmup_steps is not None and self.lr_warmup_steps < 0:
            raise ConfigError(f"config field 'lr_warmup_steps' must be >= 0, got {self.lr_warmup_steps}")
        if self.eval_every > 0 and self.n_eval_episodes < 1:
            raise ConfigError(
                f"config field 'n_eval_episodes' must be >= 1 when 'eval_every' > 0 (evaluation "
                f"every {self.eval_every} steps), got {self.n_eval_episodes}; set eval_every=0 to turn "
                "periodic evaluation off"
            )
        if self.keep_last_n is not None and self.keep_last_n < 1:
            raise ConfigError(f"config field 'keep_last_n' must be >= 1 or None (keep all), got {self.keep_last_n}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"config field 'lr' must be > 0, got {self.lr}")
        if self.adam_betas is not None and not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"config field 'adam_betas' must be in [0, 1), got {self.adam_betas}")
        if self.adam_eps <= 0 or (self.weight_decay is not None and self.weight_decay < 0):
            raise ConfigError(
                f"config fields 'adam_eps' (> 0) and 'weight_decay' (>= 0) got "
                f"{self.adam_eps}, {self.weight_decay}"
            )
        if self.grad_clip_norm is not None and self.grad_clip_norm <= 0:
            raise ConfigError(f"config field 'grad_clip_norm' must be > 0 or None, got {self.grad_clip_norm}")
        if not 0.0 <= self.ema_min_decay <= self.ema_max_decay < 1.0:
            raise ConfigError(
                "config fields 'ema_min_decay' <= 'ema_max_decay' must lie in [0, 1), got "
                f"{self.ema_min_decay}, {self.ema_max_decay}"
            )
        if self.ema_power <= 0 or self.ema_inv_gamma <= 0:
            raise ConfigError(
                f"config fields 'ema_power' and 'ema_inv_gamma' must be > 0, got "
                f"{self.ema_power}, {self.ema_inv_gamma}"
            )

    def evaluation_protocol(self) -> dict[str, int]:
        """``n_eval_episodes``, ``n_eval_envs`` and ``eval_seed``: recorded in policy files."""
        return {name: getattr(self, name) for name in EVALUATION_FIELDS}

    def resolved(self, policy_config: _HasTrainingDefaults) -> TrainingConfig:
        """A copy with every ``None`` that ``policy_config.training_defaults()`` names filled in.

        Raises:
            ConfigError: a default names a field this config does not have, or is invalid.
        """
        defaults = policy_config.training_defaults()
        unknown = sorted(set(defaults) - set(self.field_names()))
        if unknown:
            raise ConfigError(f"{type(policy_config).__name__}.training_defaults() names fields "
                              f"{unknown} that TrainingConfig does not have")
        fill = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return self.replace(**fill) if fill else self


def split_config(policy_class: type[P], values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat config dict into ``(policy values, training values)`` by the dataclass that owns
    each key (aliases resolved to the owner's field names).

    Raises:
        ConfigError: a key neither ``policy_class`` nor :class:`TrainingConfig` knows (with a
            did-you-mean), or a field given twice.
    """
    policy, training = split_by_owner(values, [policy_class, TrainingConfig])
    return policy, training


def build_configs(
    policy_class: type[P], config: Config | Mapping[str, Any] | None = None,
    training: TrainingConfig | Mapping[str, Any] | None = None, preset: Mapping[str, Any] | None = None,
) -> tuple[P, TrainingConfig]:
    """A run's ``(policy config, resolved training config)`` from what ``Trainer`` takes.

    Args:
        policy_class: the algorithm's policy config class.
        config: a ``policy_class`` instance, a flat dict of policy and training fields (aliases
            allowed), or ``None`` (all defaults).
        training: a :class:`TrainingConfig` (used as given, its ``None`` fields resolved) or a
            dict of its fields; a field may not be set both here and in ``config``.
        preset: recommended values (canonical names) applied under the user's: a key the user
            sets wins, and a user who sets part of the window (``n_obs_steps``, ``horizon``,
            ``n_action_steps``) gets none of the preset's window. Ignored when ``config`` is a
            dataclass; its training keys are ignored when ``training`` is a :class:`TrainingConfig`.

    Raises:
        ConfigError: naming the field (unknown keys with a did-you-mean); a ``config`` of another
            class; a ``training`` that is neither a dict nor a :class:`TrainingConfig`.
    """
    if isinstance(config, Config):
        if not isinstance(config, policy_class):
            raise ConfigError(f"config is a {type(config).__name__}, but this algorithm expects a "
                              f"{policy_class.__name__} (or a dict)")
        policy_values, training_values, preset = None, {}, None
    elif config is None or isinstance(config, Mapping):
        policy_values, training_values = split_config(policy_class, config or {})
    else:
        raise ConfigError(f"config must be a dict or {policy_class.__name__}, got {type(config).__name__}")
    given = isinstance(training, TrainingConfig)
    if given:
        if training_values:
            raise ConfigError(f"training fields {sorted(training_values)} given in config and a "
                              "TrainingConfig given as training: set them in one place")
    elif training is None or isinstance(training, Mapping):
        apart = TrainingConfig.resolve_aliases(training or {})
        twice = sorted(set(apart) & set(training_values))
        if twice:
            raise ConfigError(f"config fields {twice} given twice (in config and in training)")
        training_values = {**training_values, **apart}
    else:
        raise ConfigError(f"training must be a dict or TrainingConfig, got {type(training).__name__}")
    if preset and policy_values is not None:
        chosen = set(policy_values) | set(training_values)
        window = set(WINDOW_FIELDS[:3])
        preset = {k: v for k, v in preset.items() if k not in chosen and not (k in window and window & chosen)}
        if preset:
            logger.info("preset values under the config: %s (preset=False turns presets off)", preset)
        preset_policy, preset_training = split_config(policy_class, preset)
        policy_values = {**preset_policy, **policy_values}
        training_values = training_values if given else {**preset_training, **training_values}
    policy = config if policy_values is None else policy_class.from_dict(policy_values)
    run = training if given else TrainingConfig.from_dict(training_values)
    return policy, run.resolved(policy)


def policy_values_from_header(policy_class: type[Config], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The policy config values of a checkpoint header: ``meta["config"]``, which before the
    policy/training split held the training fields as well (they are dropped here).

    Raises:
        ConfigError: ``meta["config"]`` is not a dict, or holds a key neither config knows.
    """
    values = _header_dict(meta, "config")
    return dict(values) if "training" in meta else split_config(policy_class, values)[0]


def evaluation_protocol_from_header(policy_class: type[Config], meta: Mapping[str, Any]) -> dict[str, Any]:
    """The evaluation protocol a checkpoint or policy file records (``{}`` when none): a policy
    file's ``"evaluation"``, a Trainer checkpoint's ``"training"``, or the flat ``"config"`` of a
    file written before the policy/training split."""
    if isinstance(meta.get("evaluation"), Mapping):
        source = meta["evaluation"]
    elif isinstance(meta.get("training"), Mapping):
        source = meta["training"]
    else:
        source = split_config(policy_class, _header_dict(meta, "config"))[1]
    return {name: source[name] for name in EVALUATION_FIELDS if name in source}


def configs_from_header(policy_class: type[P], meta: Mapping[str, Any]) -> tuple[P, TrainingConfig]:
    """``(policy config, training config)`` of a Trainer checkpoint header: ``"config"`` (policy)
    and ``"training"``, or the one flat ``"config"`` of a checkpoint written before the split.

    Raises:
        ConfigError: a value is invalid, or a flat config holds a key neither config knows.
    """
    if "training" not in meta:
        return build_configs(policy_class, _header_dict(meta, "config"))
    policy = policy_class.from_dict(_header_dict(meta, "config"))
    return policy, TrainingConfig.from_dict(_header_dict(meta, "training")).resolved(policy)


def _header_dict(meta: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    """``meta[name]``, which must be a JSON object."""
    value = meta.get(name)
    if not isinstance(value, Mapping):
        raise ConfigError(f"header field {name!r} must be a dict, got {value!r:.60}")
    return value
