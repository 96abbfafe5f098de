"""What rlox_dp knows about an env, in one place: :class:`EnvSpec` and the env registry.

A spec says how to make the env, its observation modes (and the config keys that pick one), how
to read its demonstration files, where its default demonstrations come from (its built-in
expert), and its recommended config (presets). The Trainer, the env factory and the presets ask
the spec and never test env ids themselves. Registering an env is one call::

    register_env(EnvSpec("MyReach-v0", make=MyReachEnv, load_demos=load_my_reach_demos,
                         expert=my_reach_expert, presets={"diffusion": {"horizon": 8}}))

Ids match exactly, in any case (the rules of :mod:`rlox_dp.registry`); there is no prefix or
family matching (``"gym_pusht/PushT-v0"`` has a spec, other ``gym_pusht/...`` ids do not). An env
without a spec gets :meth:`EnvSpec.generic`: ``gym.make``, the generic ``.zarr`` / ``.npz`` /
LeRobot loaders, demonstrations from the expert registered for it in
:mod:`rlox_dp.experts` (if any), no observation modes and no presets.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from rlox_dp.config import ConfigError, did_you_mean
from rlox_dp.registry import Registry

if TYPE_CHECKING:
    from rlox_dp.buffers import Demonstrations

__all__ = [
    "ENV_REGISTRY",
    "DatasetColumns",
    "DefaultDemos",
    "DemoLoader",
    "EnvSpec",
    "available_envs",
    "env_spec",
    "find_env_spec",
    "register_env",
]

logger = logging.getLogger("rlox_dp")

DemoLoader = Callable[[Path, "str | None", Sequence[str]], "Demonstrations"]
"""``(path, obs_mode or None, obs_keys) -> Demonstrations`` read from a file or folder."""

DefaultDemos = Callable[["str | None", int, "Path | None", bool], "Demonstrations"]
"""``(obs_mode or None, n_episodes, cache_dir or None, progress) -> Demonstrations``."""

DatasetColumns = Callable[[np.ndarray, Mapping[str, np.ndarray]], dict[str, np.ndarray]]
"""``(sim_states (N, D_state), observations {key: (N, *obs_shape)}) -> {column: (N, ...)}``."""


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Everything env-specific rlox_dp needs (module docstring). Only ``env_id`` is required.

    Attributes:
        env_id: the Gymnasium id (matched exactly, any case).
        make: ``make(render_mode=None, max_episode_steps=None, **env_kwargs) -> gym.Env``; None:
            ``gym.make(env_id, ...)``. The env may have a ``Box`` or a ``Dict`` observation space
            (:func:`~rlox_dp.envs.factory.make_env` wraps it into a dict).
        obs_modes: the env's observation modes, the default first (PushT: ``"keypoints"``,
            ``"state"``, ``"image"``); empty when the env has one kind of observation.
        obs_mode_kwarg: the env constructor keyword that selects the mode (``"obs_mode"``).
        obs_config_keys: Trainer config keys that set the mode (``config={"obs": "image"}``);
            they go to the env, not to the algorithm.
        video_obs_mode: the mode chosen for a LeRobot dataset with video features when the user
            picked none (PushT: ``"image"``).
        load_demos: reads a demonstration file or folder (:data:`DemoLoader`); None: the
            generic ``.zarr`` / ``.npz`` loader. LeRobot dataset folders always use the LeRobot
            loader.
        default_demos: the demonstrations used when none are given (:data:`DefaultDemos`); None:
            collected with the expert registered for this env, and cached.
        dataset_columns: the columns of recorded steps in the layout :attr:`load_demos` reads
            (:data:`DatasetColumns`; DAgger stores its labelled episodes so); None: the
            observations as the policy saw them.
        expert: ``factory(cache_dir, progress, seed) -> EvalPolicy``, registered with
            :func:`rlox_dp.experts.register_expert` by :func:`register_env`.
        state_access: a :class:`rlox_dp.experts.StateAccess` (DAgger labels), registered with
            :func:`rlox_dp.experts.register_state_access` by :func:`register_env`.
        presets: algorithm name -> recommended config overrides (applied under the user's keys).
        obs_mode_presets: observation mode -> algorithm name -> overrides that replace the
            algorithm's entry of ``presets`` in that mode.
    """

    env_id: str
    make: Callable[..., gym.Env] | None = None
    obs_modes: tuple[str, ...] = ()
    obs_mode_kwarg: str = "obs_mode"
    obs_config_keys: tuple[str, ...] = ("obs", "obs_mode")
    video_obs_mode: str | None = None
    load_demos: DemoLoader | None = None
    default_demos: DefaultDemos | None = None
    dataset_columns: DatasetColumns | None = None
    expert: Callable[..., Any] | None = None
    state_access: Any = None
    presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    obs_mode_presets: Mapping[str, Mapping[str, Mapping[str, Any]]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise TypeError(f"EnvSpec.env_id: expected a non-empty string, got {self.env_id!r}")
        object.__setattr__(self, "obs_modes", tuple(self.obs_modes))
        object.__setattr__(self, "obs_config_keys", tuple(self.obs_config_keys))
        where = f"EnvSpec({self.env_id!r})"
        if len(set(self.obs_modes)) != len(self.obs_modes):
            raise ValueError(f"{where}.obs_modes: repeated modes in {self.obs_modes}")
        for field in ("make", "load_demos", "default_demos", "dataset_columns", "expert"):
            value = getattr(self, field)
            if value is not None and not callable(value):
                raise TypeError(f"{where}.{field}: expected a callable or None, got {value!r}")
        modes = set(self.obs_modes)
        if self.video_obs_mode is not None and self.video_obs_mode not in modes:
            raise ValueError(f"{where}.video_obs_mode: {self.video_obs_mode!r} is not one of "
                             f"obs_modes {self.obs_modes}")
        unknown = sorted(set(self.obs_mode_presets) - modes)
        if unknown:
            raise ValueError(f"{where}.obs_mode_presets: modes {unknown} are not in obs_modes {self.obs_modes}")

    @classmethod
    def generic(cls, env_id: str) -> EnvSpec:
        """The spec of an env nobody registered: every field at its default."""
        return cls(env_id)

    # -- observation modes -------------------------------------------------------------------
    @property
    def default_obs_mode(self) -> str | None:
        """The first of :attr:`obs_modes`, or None for an env with one kind of observation."""
        return self.obs_modes[0] if self.obs_modes else None

    def obs_mode(self, env_kwargs: Mapping[str, Any]) -> str | None:
        """The mode ``env_kwargs`` selects (the default when they select none)."""
        if not self.obs_modes:
            return None
        return env_kwargs.get(self.obs_mode_kwarg, self.default_obs_mode)

    def pop_env_config(self, config: MutableMapping[str, Any]) -> dict[str, Any]:
        """Remove the observation-mode keys (:attr:`obs_config_keys`) from a Trainer config dict
        and return them as env kwargs (``{"obs_mode": "image"}``).

        Raises:
            ConfigError: such a key on an env without observation modes, an unknown mode (with a
                suggestion), or two keys with different modes.
        """
        given = {key: config.pop(key) for key in self.obs_config_keys if key in config}
        if not given:
            return {}
        key = next(iter(given))
        if not self.obs_modes:
            with_modes = [s.env_id for _, s in ENV_REGISTRY.items() if s.obs_modes]
            raise ConfigError(
                f"config key {key!r} (observation mode) only applies to envs with several "
                f"observation modes ({', '.join(with_modes) or 'none registered'}), not {self.env_id!r}"
            )
        if len(set(given.values())) > 1:
            raise ConfigError(f"observation mode given twice with different values: {given}")
        mode = given[key]
        if mode not in self.obs_modes:
            raise ConfigError(
                f"config key {key!r}: env {self.env_id!r} has observation modes "
                f"{', '.join(map(repr, self.obs_modes))}, got {mode!r}.{did_you_mean(str(mode), self.obs_modes)}"
            )
        return {self.obs_mode_kwarg: mode}

    def obs_mode_for_demos(self, demos: Any, env_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Env kwargs for ``demos``: :attr:`video_obs_mode` added when ``demos`` is a LeRobot
        dataset folder with video and ``env_kwargs`` pick no mode; otherwise a copy of them."""
        out = dict(env_kwargs)
        if self.video_obs_mode is None or self.obs_mode_kwarg in out:
            return out
        from rlox_dp.buffers.lerobot import has_video_features, is_lerobot_dataset

        if is_lerobot_dataset(demos) and has_video_features(demos):
            out[self.obs_mode_kwarg] = self.video_obs_mode
            logger.info("LeRobot dataset with video: %s in %r mode (obs=%s)", self.env_id,
                        self.video_obs_mode, self.video_obs_mode)
        return out

    # -- making the env ----------------------------------------------------------------------
    def make_env(self, render_mode: str | None = None, max_episode_steps: int | None = None,
                 **env_kwargs: Any) -> gym.Env:
        """The env, before :func:`~rlox_dp.envs.factory.make_env` wraps its observations."""
        if self.make is not None:
            return self.make(render_mode=render_mode, max_episode_steps=max_episode_steps, **env_kwargs)
        if render_mode is not None:  # only when asked: not every env accepts the argument
            env_kwargs["render_mode"] = render_mode
        return gym.make(self.env_id, max_episode_steps=max_episode_steps, **env_kwargs)

    # -- demonstrations ----------------------------------------------------------------------
    def dataset_observations(self, sim_states: np.ndarray,
                             observations: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Recorded steps as stored columns (:attr:`dataset_columns`, else ``observations``):
        ``sim_states`` ``(N, D_state)``, ``observations`` ``{key: (N, *obs_shape)}``."""
        if self.dataset_columns is None:
            return dict(observations)
        return self.dataset_columns(sim_states, observations)

    def load_demonstrations(self, path: str | os.PathLike, obs_mode: str | None,
                            obs_keys: Sequence[str]) -> Demonstrations:
        """Demonstrations from ``path``: a LeRobot dataset folder, else :attr:`load_demos` (or the
        generic ``.zarr`` / ``.npz`` loader), with observations ``{key: (N, *obs_shape)}`` for
        ``obs_keys``, actions ``(N, D_act)`` and episode ends ``(E,)``."""
        from rlox_dp.buffers.lerobot import is_lerobot_dataset, load_lerobot_dataset

        if is_lerobot_dataset(path):
            return load_lerobot_dataset(path, obs_keys=list(obs_keys))
        mode = obs_mode if obs_mode is not None else self.default_obs_mode
        if self.load_demos is not None:
            return self.load_demos(Path(path), mode, list(obs_keys))
        from rlox_dp.buffers import load_demonstrations

        return load_demonstrations(path, obs_keys=list(obs_keys))

    def default_demonstrations(self, obs_mode: str | None, n_episodes: int,
                               cache_dir: str | os.PathLike | None, progress: bool) -> Demonstrations:
        """The env's own demonstrations (:attr:`default_demos`, or ``n_episodes`` collected with
        its registered expert and cached)."""
        mode = obs_mode if obs_mode is not None else self.default_obs_mode
        cache = Path(cache_dir) if cache_dir is not None else None
        if self.default_demos is not None:
            return self.default_demos(mode, n_episodes, cache, progress)
        from rlox_dp.experts import default_demonstrations

        return default_demonstrations(self.env_id, n_episodes=n_episodes, cache_dir=cache, progress=progress)

    # -- presets -----------------------------------------------------------------------------
    def preset(self, algorithm: str, obs_mode: str | None = None) -> dict[str, Any]:
        """A copy of the recommended overrides for ``algorithm`` (any case) in ``obs_mode``:
        the mode's own entry where there is one, else the env's; empty when none."""
        by_mode = self.obs_mode_presets.get(obs_mode, {}) if obs_mode is not None else {}
        for table in (by_mode, self.presets):
            for name, overrides in table.items():
                if name.casefold() == algorithm.casefold():
                    return dict(overrides)
        return {}


#: env id -> :class:`EnvSpec` (rules: :mod:`rlox_dp.registry`).
ENV_REGISTRY: Registry[EnvSpec] = Registry("env")


def register_env(spec: EnvSpec) -> EnvSpec:
    """Register ``spec`` (and its expert and state access, if it has them) in one call.

    Raises:
        TypeError: ``spec`` is not an :class:`EnvSpec`.
        ValueError: the id (any case) or its expert / state access is already registered for
            something else; nothing is registered then.
    """
    if not isinstance(spec, EnvSpec):
        raise TypeError(f"register_env expects an EnvSpec, got {type(spec).__name__}")
    if ENV_REGISTRY.find(spec.env_id) is spec:
        return spec
    if spec.env_id in ENV_REGISTRY:
        raise ValueError(f"env {spec.env_id!r} is already registered (as "
                         f"{ENV_REGISTRY.canonical(spec.env_id)!r}); ids are matched in any case")
    if spec.expert is None and spec.state_access is None:
        ENV_REGISTRY.register(spec.env_id, spec)
        return spec
    # imported here: rlox_dp.experts imports rlox_dp.envs (the built-in specs need neither)
    from rlox_dp.experts import register_expert, register_state_access
    from rlox_dp.experts.labelling import STATE_ACCESS
    from rlox_dp.experts.registry import EXPERTS

    for what, value, registry in (("expert", spec.expert, EXPERTS),
                                  ("state access", spec.state_access, STATE_ACCESS)):
        if value is not None and registry.find(spec.env_id) not in (None, value):
            raise ValueError(f"env {spec.env_id!r}: a different {what} is already registered for it")
    ENV_REGISTRY.register(spec.env_id, spec)
    if spec.expert is not None:
        register_expert(spec.env_id)(spec.expert)
    if spec.state_access is not None:
        register_state_access(spec.env_id, spec.state_access)
    return spec


def find_env_spec(env_id: str) -> EnvSpec | None:
    """The registered spec of ``env_id`` (any case), or None."""
    return ENV_REGISTRY.find(env_id)


def env_spec(env_id: str) -> EnvSpec:
    """The registered spec of ``env_id`` (any case), or :meth:`EnvSpec.generic` for it."""
    spec = ENV_REGISTRY.find(env_id)
    return spec if spec is not None else EnvSpec.generic(env_id)


def available_envs() -> list[str]:
    """Ids of the envs with a registered spec, in registration order (others work generically)."""
    return ENV_REGISTRY.names()
