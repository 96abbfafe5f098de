"""The interface every algorithm shares, its policy config, and the algorithm registry.

An algorithm predicts ``H`` actions from ``T_o`` observations (its :class:`~rlox_dp.window.Window`,
whose docstring draws the timeline); at inference the ``n_a`` actions starting at the current step
are executed, then it replans (receding horizon).
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rlox_dp.algorithms.predict import (
    as_tensor,
    batch_observation,
    checked_observation_batch,
    episode_start_mask,
)
from rlox_dp.buffers import Batch, Normalizer
from rlox_dp.config import Config
from rlox_dp.distributed import GlobalBatch
from rlox_dp.registry import Registry
from rlox_dp.window import Window

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "PolicyConfig",
    "available_algorithms",
    "get_algorithm_class",
    "register_algorithm",
]


@dataclasses.dataclass
class PolicyConfig(Config):
    """What a policy needs to act, shared by every algorithm: its window and its normalization.

    Every algorithm's config (``DiffusionConfig``, ``BCConfig`` ...) derives from it and adds its
    network (and sampler); how the policy is trained is a :class:`~rlox_dp.training.TrainingConfig`.

    Attributes:
        n_obs_steps, horizon, n_action_steps, drop_n_last_frames: the observation/action
            :class:`~rlox_dp.window.Window` (:attr:`window`, which checks them).
        obs_normalization / action_normalization: ``"min_max"`` (to [-1, 1]) or ``"mean_std"``;
            images always use ``"image"`` (0..255 -> [0, 1]).
    """

    n_obs_steps: int = 2
    horizon: int = 16
    n_action_steps: int | None = None
    drop_n_last_frames: int = 0
    obs_normalization: Literal["min_max", "mean_std"] = "min_max"
    action_normalization: Literal["min_max", "mean_std"] = "min_max"

    ALIASES: ClassVar[dict[str, str]] = {**Window.ALIASES}

    def validate(self) -> None:
        """Check the window (:class:`Window`, the one place); fills in ``n_action_steps`` when ``None``."""
        self.n_action_steps = self.window.n_action_steps

    @property
    def window(self) -> Window:
        """The observation/action :class:`Window` (validated on construction)."""
        return Window(self.n_obs_steps, self.horizon, self.n_action_steps, self.drop_n_last_frames)

    def training_defaults(self) -> dict[str, Any]:
        """Training settings this policy trains best with, applied where the
        :class:`~rlox_dp.training.TrainingConfig` leaves them ``None``: the original Diffusion
        Policy's AdamW (lr 1e-4, betas (0.95, 0.999), weight decay 1e-6), 500 warmup steps and an
        EMA of the weights. Subclasses override what differs."""
        return {"lr": 1e-4, "adam_betas": (0.95, 0.999), "weight_decay": 1e-6, "lr_warmup_steps": 500,
                "use_ema": True}



A = TypeVar("A", bound="type[Algorithm]")


def _check_algorithm(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
        raise TypeError(f"@register_algorithm({name!r}) expects an Algorithm subclass, got {cls!r}")


#: registered algorithms: name -> :class:`Algorithm` subclass (rules: :mod:`rlox_dp.registry`).
ALGORITHMS: Registry[type[Algorithm]] = Registry("algorithm", check=_check_algorithm)


def register_algorithm(name: str) -> Callable[[A], A]:
    """Class decorator registering an :class:`Algorithm` subclass under ``name`` (its ``name``)."""

    def decorator(cls: A) -> A:
        ALGORITHMS.register(name, cls)
        cls.name = ALGORITHMS.canonical(name)
        return cls

    return decorator


def available_algorithms() -> list[str]:
    """Sorted names of the registered algorithms."""
    return sorted(ALGORITHMS.names())


def get_algorithm_class(name: str) -> type[Algorithm]:
    """Look ``name`` up (any case); an unknown name raises a ValueError listing the known ones."""
    return ALGORITHMS.get(name)


class Algorithm(nn.Module, ABC):
    """Base class of BC and Diffusion Policy (a policy plus the loss it is trained with).

    Subclasses implement :meth:`compute_loss` and :meth:`predict_normalized_actions`; this class
    handles normalization, action-space clipping and the receding-horizon queues of
    :meth:`select_action`, which satisfies :class:`rlox_dp.evaluation.EvalPolicy`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig
    #: Deterministic inference: every chunk is predicted from the same noise, drawn from a
    #: generator of the policy's own seeded with :attr:`noise_seed` at every call and shared by all
    #: envs of the batch, so an env's actions are a function of its own observations only.
    #: ``predict(..., deterministic=True)`` turns it on for its call; set it to make
    #: :meth:`select_action` deterministic too. Off: noise from torch's global generator.
    fixed_noise: bool = False
    noise_seed: int = 0

    def __init__(
        self,
        config: PolicyConfig,
        observation_space: gym.spaces.Dict,
        action_space: gym.spaces.Box,
        normalizer: Normalizer,
    ) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} expects config of type {self.config_class.__name__}, "
                f"got {type(config).__name__}"
            )
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(
                f"action_space must be a 1-D gymnasium Box (continuous actions), got {action_space}"
            )
        if not isinstance(observation_space, gym.spaces.Dict):
            raise ValueError(f"observation_space must be a gymnasium Dict space, got {observation_space}")
        missing = [k for k in [*observation_space.spaces, "action"] if k not in normalizer.keys]
        if missing:
            raise ValueError(
                f"normalizer has no statistics for {missing}; it has {sorted(normalizer.keys)}"
            )
        for key, space in observation_space.spaces.items():
            stat_shape = tuple(normalizer.spec()[key]["shape"])
            if tuple(space.shape) != stat_shape:
                raise ValueError(
                    f"observation {key!r}: the env's shape {tuple(space.shape)} does not match the "
                    f"demonstrations' shape {stat_shape}"
                )
        if tuple(normalizer.spec()["action"]["shape"]) != tuple(action_space.shape):
            raise ValueError(
                f"action: the env's shape {tuple(action_space.shape)} does not match the "
                f"demonstrations' shape {tuple(normalizer.spec()['action']['shape'])}"
            )
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.normalizer = normalizer
        self.action_dim = int(action_space.shape[0])
        self.register_buffer("action_low", torch.as_tensor(action_space.low, dtype=torch.float32))
        self.register_buffer("action_high", torch.as_tensor(action_space.high, dtype=torch.float32))
        self._obs_history: dict[str, torch.Tensor] | None = None
        self._action_queue: torch.Tensor | None = None
        self._queue_pos: torch.Tensor | None = None
        self._fresh: torch.Tensor | None = None

    # -- what subclasses implement ----------------------------------------------------------------
    @abstractmethod
    def compute_loss(
        self, batch: Batch, generator: torch.Generator | None = None, *, global_batch: GlobalBatch | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a normalized batch (``Batch.action`` is ``(B, H, D_act)``).

        ``global_batch``: under data parallelism, where these ``B`` windows sit in the global
        batch; per-sample randomness (noise, timesteps) is drawn for the whole global batch and
        sliced, so N ranks reproduce one process. ``None``: the batch is the global batch.

        Returns:
            ``(loss, info)``: scalar loss tensor (with grad) and detached scalar diagnostics
            for logging (tensors, so that no host-device sync happens unless they are read).
        """

    @abstractmethod
    def predict_normalized_actions(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Actions to execute, normalized: obs ``(B, T_o, ...)`` -> ``(B, n_action_steps, D_act)``."""

    def predict_normalized_actions_fixed_noise(
        self, obs: dict[str, torch.Tensor], generator: torch.Generator
    ) -> torch.Tensor:
        """:meth:`predict_normalized_actions` with the same noise for every row of the batch, so
        that a row's actions depend on its own observations only (see :attr:`fixed_noise`).

        Policies that draw no noise at inference (BC) keep this default.
        """
        return self.predict_normalized_actions(obs, generator)

    def forward(
        self, batch: Batch, generator: torch.Generator | None = None, *, global_batch: GlobalBatch | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Same as :meth:`compute_loss` (so wrappers such as DDP can call the module)."""
        return self.compute_loss(batch, generator, global_batch=global_batch)

    def optimizer_param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups for the training config's ``weight_decay``; a group's own
        ``weight_decay`` overrides it. Default: every parameter in one group (at ``weight_decay``)."""
        return [{"params": list(self.parameters())}]

    def compile_networks(self, **compile_kwargs: Any) -> None:
        """``torch.compile`` every trainable sub-network in place (state-dict keys unchanged)."""
        for module in self.children():
            if not isinstance(module, Normalizer) and any(True for _ in module.parameters()):
                module.compile(**compile_kwargs)

    # -- shared inference -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Device of the module's buffers."""
        return self.action_low.device

    def normalize_obs(self, obs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Raw observation window key -> ``(B, T_o, ...)`` to normalized float tensors."""
        missing = [k for k in self.observation_space.spaces if k not in obs]
        if missing:
            raise KeyError(f"observation is missing keys {missing}; got keys {sorted(obs)}")
        return {
            k: self.normalizer.normalize(k, as_tensor(obs[k], self.device))
            for k in self.observation_space.spaces
        }

    @torch.no_grad()
    def predict_action_chunk(
        self, obs_window: Mapping[str, Any], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raw observation window ``(B, T_o, ...)`` per key -> raw actions ``(B, n_action_steps, D_act)``.

        Actions are unnormalized and clipped to the action space bounds. With :attr:`fixed_noise`
        on and no ``generator`` given, the chunk is predicted with
        :meth:`predict_normalized_actions_fixed_noise` from a generator of the policy's own,
        seeded with :attr:`noise_seed` at every call.
        """
        obs = self.normalize_obs(obs_window)
        if self.fixed_noise and generator is None:
            own = torch.Generator(device=self.device).manual_seed(self.noise_seed)
            actions = self.predict_normalized_actions_fixed_noise(obs, own)
        else:
            actions = self.predict_normalized_actions(obs, generator)
        actions = self.normalizer.unnormalize("action", actions)
        return torch.maximum(torch.minimum(actions, self.action_high), self.action_low)

    def predict(
        self,
        observation: Mapping[str, Any] | np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, None]:
        """Stable-Baselines3's ``predict``: ``stable_baselines3.common.evaluation.evaluate_policy``
        and SB3-style loops can run this policy directly.

        Args:
            observation: one observation (key -> ``obs_shape``) or a batch of ``n_envs``
                (key -> ``(n_envs, *obs_shape)``), as numpy arrays or tensors; a policy with the
                single key ``"state"`` also takes the plain array of a ``Box`` env.
            state: ignored (SB3's recurrent state). The observation history and action queue of
                every env live in the policy, as in :meth:`select_action`.
            episode_start: ``(n_envs,)`` bool (a bool for one observation): True where the
                observation is the first of a new episode; those envs' histories and queues are
                reset before acting. None: no env starts a new episode (call :meth:`reset` between
                episodes yourself).
            deterministic: True: :attr:`fixed_noise` for this call (Diffusion Policy starts every
                chunk from the same noise of the policy's own generator; BC is deterministic
                anyway). False: noise from torch's global generator. SB3 defaults to False; we
                default to True, the setting ``evaluate_policy`` passes.

        Returns:
            ``(actions, None)``: ``(n_envs, D_act)`` float32 actions for a batch, ``(D_act,)`` for
            one observation, clipped to the action space. As SB3 does, the policy is put in eval
            mode.
        """
        obs, single = batch_observation(self.observation_space, observation)
        batch = next(iter(obs.values())).shape[0]
        mask = episode_start_mask(episode_start, batch, single)
        self.eval()
        if mask is not None and bool(mask.any()):
            if self._queue_pos is None or self._queue_pos.shape[0] != batch:
                self.reset()
            else:
                self.reset(mask)
        before = self.fixed_noise
        self.fixed_noise = bool(deterministic)
        try:
            actions = self.select_action(obs)
        finally:
            self.fixed_noise = before
        actions = actions.astype(np.float32, copy=False)
        return (actions[0] if single else actions), None

    def save(self, path: str | os.PathLike, *, env: str | None = None,
             env_kwargs: Mapping[str, Any] | None = None) -> Path:
        """Write this policy alone (weights, normalizer, config, spaces) to a safetensors file.

        ``trainer.eval_policy.save(path)`` saves the EMA weights. ``env`` / ``env_kwargs`` are
        recorded for evaluation. Read it back with :func:`rlox_dp.load_policy` or
        ``Algorithm.load``. Returns the path.
        """
        from rlox_dp.policy_io import save_policy

        return save_policy(self, path, env=env, env_kwargs=env_kwargs)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             ema: bool = True) -> Algorithm:
        """:func:`rlox_dp.load_policy`, checking the file holds this class (or a subclass)."""
        from rlox_dp.policy_io import load_policy

        policy = load_policy(path, device=device, ema=ema)
        if not isinstance(policy, cls):
            raise TypeError(f"{path} holds a {type(policy).__name__} ({policy.name!r}), not a {cls.__name__}")
        return policy

    def reset(self, env_mask: np.ndarray | torch.Tensor | None = None) -> None:
        """Clear observation history and queued actions (of the envs where ``env_mask`` is True)."""
        if env_mask is None or self._obs_history is None:
            self._obs_history = self._action_queue = self._queue_pos = self._fresh = None
            return
        mask = as_tensor(env_mask, self.device).bool()
        if tuple(mask.shape) != tuple(self._queue_pos.shape):
            raise ValueError(
                f"reset: env_mask must have shape ({self._queue_pos.shape[0]},), one flag per env of "
                f"the batch select_action is acting on, got shape {tuple(mask.shape)}"
            )
        self._fresh |= mask
        self._queue_pos[mask] = self.config.n_action_steps

    @torch.no_grad()
    def select_action(self, obs: Mapping[str, Any]) -> np.ndarray:
        """One action per env: obs key -> ``(B, ...)`` -> ``(B, D_act)`` numpy array.

        Keeps the last ``n_obs_steps`` observations per env (edge-replicated at an episode start,
        as in training) and a queue of ``n_action_steps`` actions, replanning an env only when its
        queue is empty (receding horizon).

        Raises:
            KeyError: an observation key is missing.
            ValueError: a key's shape is not ``(B, *obs_shape)`` (e.g. no batch dimension), or it
                holds NaN/inf (naming the key and the rows).
        """
        t_o, n_a = self.config.n_obs_steps, self.config.n_action_steps
        current = checked_observation_batch(self.observation_space, obs, self.device)
        batch = next(iter(current.values())).shape[0]
        if self._obs_history is None or self._queue_pos.shape[0] != batch:
            self._obs_history = {
                k: v.unsqueeze(1).expand(-1, t_o, *v.shape[1:]).clone() for k, v in current.items()
            }
            self._action_queue = torch.zeros(batch, n_a, self.action_dim, device=self.device)
            self._queue_pos = torch.full((batch,), n_a, dtype=torch.long, device=self.device)
            self._fresh = torch.zeros(batch, dtype=torch.bool, device=self.device)
        else:
            fresh = self._fresh
            for k, v in current.items():
                hist = torch.roll(self._obs_history[k], shifts=-1, dims=1)
                hist[:, -1] = v
                hist[fresh] = v[fresh].unsqueeze(1).expand(-1, t_o, *v.shape[1:])
                self._obs_history[k] = hist
            self._fresh = torch.zeros_like(fresh)
        need = self._queue_pos >= n_a
        if bool(need.any()):
            window = {k: v[need] for k, v in self._obs_history.items()}
            self._action_queue[need] = self.predict_action_chunk(window).to(self._action_queue.dtype)
            self._queue_pos[need] = 0
        rows = torch.arange(batch, device=self.device)
        action = self._action_queue[rows, self._queue_pos]
        self._queue_pos += 1
        return action.cpu().numpy()
