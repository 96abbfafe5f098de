"""The training / inference window: how many observations a policy sees and actions it predicts.

One :class:`Window` is owned by the policy config (``config.window``) and handed to the
:class:`~rlox_dp.buffers.DemonstrationBuffer`, so the window arithmetic is checked in one place,
here. Timeline of one window (``T_o`` = n_obs_steps, ``H`` = horizon, ``n_a`` = n_action_steps),
the original Diffusion Policy convention::

    step:     s      s+1   ...  s+T_o-1   ...                         s+H-1
    obs:     |o_s ... o_{s+T_o-1}|
    actions: |a_s ...         a_{s+T_o-1} ... a_{s+T_o-2+n_a} ... a_{s+H-1}|
                               '---- executed at inference -----'
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from rlox_dp.config import Config, ConfigError

__all__ = ["WINDOW_FIELDS", "Window"]

#: the window's field names, as they also appear (flat) in every policy config.
WINDOW_FIELDS = ("n_obs_steps", "horizon", "n_action_steps", "drop_n_last_frames")


@dataclasses.dataclass
class Window(Config):
    """Observation and action window of a policy (validated on construction).

    Attributes:
        n_obs_steps: observations the policy conditions on (current + past), ``T_o >= 1``.
        horizon: actions predicted per call, ``H >= T_o`` (the predicted actions start at the
            first observation step).
        n_action_steps: actions executed per call before replanning, in ``[1, H - T_o + 1]``;
            ``None`` picks ``min(H // 2, H - T_o + 1)`` (8 for the paper's H=16, T_o=2).
        drop_n_last_frames: windows whose start would reach into the last frames of an episode
            are not sampled (LeRobot's option; 0 keeps every window the original repo keeps).
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int | None = None
    drop_n_last_frames: int = 0

    ALIASES: ClassVar[dict[str, str]] = {"obs_horizon": "n_obs_steps", "action_horizon": "horizon"}

    def validate(self) -> None:
        """Check the window arithmetic; fills in ``n_action_steps`` when ``None``."""
        for name in ("n_obs_steps", "horizon"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be >= 1, got {getattr(self, name)}")
        if self.drop_n_last_frames < 0:
            raise ConfigError(f"config field 'drop_n_last_frames' must be >= 0, got {self.drop_n_last_frames}")
        if self.horizon < self.n_obs_steps:
            raise ConfigError(
                f"config field 'horizon' must be >= n_obs_steps ({self.n_obs_steps}) because the "
                f"predicted actions start at the first observation step; got {self.horizon}"
            )
        max_exec = self.horizon - self.n_obs_steps + 1
        if self.n_action_steps is None:
            self.n_action_steps = max(1, min(self.horizon // 2, max_exec))
        if not 1 <= self.n_action_steps <= max_exec:
            raise ConfigError(
                f"config field 'n_action_steps' must be in [1, horizon - n_obs_steps + 1 = "
                f"{max_exec}] (actions executed from the current step to the end of the horizon), "
                f"got {self.n_action_steps}"
            )
