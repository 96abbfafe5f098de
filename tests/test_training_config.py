"""``TrainingConfig`` and the split of a flat config dict between the policy and the training config."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest

from rlox_dp.config import Config, ConfigError, split_by_owner
from rlox_dp.training import TrainingConfig


@dataclasses.dataclass
class _Policy(Config):
    horizon: int = 16
    hidden_dim: int = 32
    ALIASES: ClassVar[dict[str, str]] = {"action_horizon": "horizon"}

    def training_defaults(self) -> dict[str, Any]:
        return {"lr": 1e-3, "use_ema": False, "adam_betas": (0.9, 0.95)}


def test_the_policys_defaults_fill_what_the_user_left_unset() -> None:
    training = TrainingConfig(lr=5e-4).resolved(_Policy())
    assert training.lr == 5e-4  # set by the user: kept
    assert (training.use_ema, training.adam_betas) == (False, (0.9, 0.95))
    assert training.weight_decay is None  # this policy names no default for it
    unset = TrainingConfig()
    assert unset.resolved(_Policy()).lr == 1e-3 and unset.lr is None  # resolved() copies


def test_a_default_for_a_field_training_does_not_have_is_an_error() -> None:
    class Wrong(_Policy):
        def training_defaults(self) -> dict[str, Any]:
            return {"learning_rat": 1.0}

    with pytest.raises(ConfigError, match=r"Wrong.training_defaults\(\) names fields \['learning_rat'\]"):
        TrainingConfig().resolved(Wrong())


@pytest.mark.parametrize("alias,field,value", [
    ("learning_rate", "lr", 3e-4), ("optimizer_lr", "lr", 3e-4), ("optimizer_betas", "adam_betas", (0.9, 0.99)),
    ("optimizer_eps", "adam_eps", 1e-6), ("optimizer_weight_decay", "weight_decay", 0.01),
    ("scheduler_name", "lr_scheduler", "linear"), ("scheduler_warmup_steps", "lr_warmup_steps", 7),
    ("grad_clip", "grad_clip_norm", 1.0),
])
def test_rlox_and_lerobot_aliases(alias, field, value) -> None:
    assert getattr(TrainingConfig.from_dict({alias: value}), field) == value


@pytest.mark.parametrize("values,match", [
    ({"batch_size": 0}, r"'batch_size' must be >= 1, got 0"),
    ({"lr": -1.0}, r"'lr' must be > 0, got -1.0"),
    ({"lr": "fast"}, r"'lr': expected .*got 'fast'"),
    ({"adam_betas": (0.9, 1.0)}, r"'adam_betas' must be in \[0, 1\)"),
    ({"lr_warmup_steps": -1}, r"'lr_warmup_steps' must be >= 0, got -1"),
    ({"eval_every": 5, "n_eval_episodes": 0}, r"'n_eval_episodes' must be >= 1 when 'eval_every' > 0"),
    ({"keep_last_n": 0}, r"'keep_last_n' must be >= 1 or None"),
    ({"mixed_precision": "fp8"}, r"'mixed_precision'.*'no', 'bf16', 'fp16'.*got 'fp8'"),
    ({"ema_max_decay": 1.0}, r"'ema_min_decay' <= 'ema_max_decay' must lie in \[0, 1\)"),
    ({"total_step": 10}, r"unknown config key 'total_step'.*Did you mean 'total_steps'"),
])
def test_errors_name_the_field(values, match) -> None:
    with pytest.raises(ConfigError, match=match):
        TrainingConfig.from_dict(values)


def test_split_by_owner_sends_each_key_to_the_class_that_owns_it() -> None:
    policy, training = split_by_owner({"action_horizon": 8, "learning_rate": 1e-3, "batch_size": 4,
                                       "hidden_dim": 64}, [_Policy, TrainingConfig])
    assert policy == {"horizon": 8, "hidden_dim": 64}
    assert training == {"lr": 1e-3, "batch_size": 4}
    with pytest.raises(ConfigError, match=r"unknown config key 'hiden_dim' for _Policy / TrainingConfig\. "
                                          r"Did you mean 'hidden_dim'"):
        split_by_owner({"hiden_dim": 3}, [_Policy, TrainingConfig])
    with pytest.raises(ConfigError, match=r"'lr' given twice \(directly and through the alias 'learning_rate'\)"):
        split_by_owner({"lr": 1e-3, "learning_rate": 1e-3}, [_Policy, TrainingConfig])
