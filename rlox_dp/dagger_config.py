"""DAgger settings (:class:`DAggerConfig`), given to :class:`~rlox_dp.dagger.DAgger` as a dict or
as ``dagger_<field>`` keys of a Trainer's flat config::

    Trainer("diffusion", env="gym_pusht/PushT-v0", demos="pusht.zarr",
            config={"obs": "keypoints", "dagger_rounds": 4, "dagger_episodes": 50}).train()
"""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping
from typing import Any

from rlox_dp.config import Config, ConfigError

__all__ = ["DAGGER_PREFIX", "DAggerConfig", "pop_dagger_config"]

#: flat Trainer config keys ``dagger_<field>`` set :class:`DAggerConfig` fields.
DAGGER_PREFIX = "dagger_"


@dataclasses.dataclass
class DAggerConfig(Config):
    """DAgger settings (see the module docstring).

    Attributes:
        rounds: rollout/label/train rounds after round 0.
        episodes: rollout episodes per round.
        steps_per_round: gradient steps after each aggregation.
        initial_steps: gradient steps on the given demonstrations before round 1 (None: the
            trainer's ``total_steps``; a trainer already past it is not trained further).
        beta, beta_decay: the expert drives a labelled chunk with probability
            ``beta * beta_decay ** (r - 1)`` in round ``r``.
        label_every: label every this many steps of a rollout (None: ``n_action_steps``).
        label_horizon: expert actions per label (None: the policy's ``horizon``).
        n_envs: envs rolled out in lockstep.
        max_episode_steps: time limit of the rollouts (None: the env's own).
        first_seed: reset seed of the first rollout episode.
        evaluate: evaluate after every round (the trainer's protocol: ``n_eval_episodes`` ...).
        label_budget: the rounds label at most this many expert actions in all (None: no
            budget): labelling stops before the first whole label that would exceed it, the
            rollouts in progress end there and no further round starts.
    """

    rounds: int = 4
    episodes: int = 50
    steps_per_round: int = 5000
    initial_steps: int | None = None
    beta: float = 0.5
    beta_decay: float = 0.5
    label_every: int | None = None
    label_horizon: int | None = None
    n_envs: int = 8
    max_episode_steps: int | None = None
    first_seed: int = 200_000
    evaluate: bool = True
    label_budget: int | None = None

    def validate(self) -> None:
        """Ranges of every field."""
        for name in ("rounds", "episodes", "n_envs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("steps_per_round", "initial_steps", "first_seed"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ConfigError(f"config field {name!r} must be >= 0, got {getattr(self, name)}")
        for name in ("label_every", "label_horizon", "max_episode_steps", "label_budget"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1 or None, got {getattr(self, name)}")
        for name in ("beta", "beta_decay"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"config field {name!r} must be in [0, 1], got {getattr(self, name)}")


def pop_dagger_config(values: MutableMapping[str, Any]) -> DAggerConfig | None:
    """Remove the ``dagger_<field>`` keys from a flat config dict and build their :class:`DAggerConfig`.

    Returns:
        the config, or None when ``values`` holds no ``dagger_`` key (no DAgger).

    Raises:
        ConfigError: an unknown or invalid field, named with its ``dagger_`` key.
    """
    keys = [k for k in values if isinstance(k, str) and k.startswith(DAGGER_PREFIX)]
    if not keys:
        return None
    fields = {k[len(DAGGER_PREFIX):]: values.pop(k) for k in keys}
    try:
        return DAggerConfig.from_dict(fields)
    except ConfigError as err:
        known = ", ".join(DAGGER_PREFIX + f.name for f in dataclasses.fields(DAggerConfig))
        raise ConfigError(f"DAgger config keys {', '.join(keys)}: {err} (the Trainer's {DAGGER_PREFIX}<field> "
                          f"keys are DAggerConfig fields: {known})") from None
