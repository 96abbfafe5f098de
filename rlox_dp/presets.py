"""Per-env recommended settings, applied under the user's config (like rl-zoo's hyperparameters).

The algorithm configs' defaults are the paper's (a 63 M-parameter U-Net for 10 Hz position
control). Small torque-control tasks such as Pendulum-v1 and InvertedDoublePendulum-v5 need a
smaller network, shorter open-loop execution and fewer steps to train in minutes on a CPU, and
PushT a narrower U-Net; those settings live here, one dict per ``(algorithm, env)``, measured by
``benchmarks/pendulum.py`` and ``benchmarks/pusht.py``. A user's own config keys
always win, and ``Trainer(..., preset=False)`` (CLI ``--no-preset``) turns presets off.

The tables below hold the numbers; each env's :class:`~rlox_dp.envs.spec.EnvSpec` points at its
table (``presets``, and ``obs_mode_presets`` per observation mode), so the env registry is where
:func:`preset_for` looks. :data:`PRESETS` and :data:`OBS_MODE_PRESETS` are read-only views of
the registered specs, keyed ``(algorithm, env_id)`` and ``(algorithm, env_id, obs_mode)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

K = TypeVar("K")

__all__ = [
    "INVERTED_DOUBLE_PENDULUM_PRESETS",
    "OBS_MODE_PRESETS",
    "PENDULUM_PRESETS",
    "PRESETS",
    "PUSHT_IMAGE_PRESETS",
    "PUSHT_PRESETS",
    "preset_for",
]

_PENDULUM_DIFFUSION: dict[str, Any] = {
    "denoiser": "mlp",
    "hidden_dim": 256,
    "n_layers": 4,
    "horizon": 8,
    "n_obs_steps": 2,
    "n_action_steps": 2,
    "prediction_type": "sample",
    "lr": 1e-3,
    "total_steps": 5000,
}

#: balancing at 20 Hz needs closed-loop control: replan every step (H=8 with 2 executed actions
#: falls after ~160 steps); measured by ``benchmarks/pendulum.py --env InvertedDoublePendulum-v5``.
_INVERTED_DOUBLE_PENDULUM_DIFFUSION: dict[str, Any] = {
    **_PENDULUM_DIFFUSION,
    "horizon": 4,
    "n_action_steps": 1,
    "noise_scheduler_type": "DDIM",
    "num_inference_steps": 10,
}

#: PushT (human demos, keypoints): the paper's windows with a U-Net at 1/8 of the paper's width,
#: which scored 0.971 on 50 held-out seeds after 15k steps (2 training seeds, 19 min each on one CPU
#: thread), like the paper-width-1/4 U-Net in 2.7x less time. For the success rate, train 45k steps
#: (58 min) and evaluate with DDPM's 100 steps: success 0.65 at score 0.935 (DDIM10: 0.48).
#: Measured by ``benchmarks/pusht.py`` / ``pusht_fastest.py``.
_PUSHT_DIFFUSION: dict[str, Any] = {
    "denoiser": "unet",
    "down_dims": (32, 64, 128),
    "n_obs_steps": 2,
    "horizon": 16,
    "n_action_steps": 8,
    "batch_size": 64,
    "lr": 3e-4,
    "noise_scheduler_type": "DDIM",
    "num_inference_steps": 10,
    "total_steps": 15_000,
    "n_eval_episodes": 50,
    "n_eval_envs": 50,
}

#: PushT from camera images (``obs="image"``): the compact image encoder (a 3-layer conv net with the
#: paper's spatial softmax, ~13x cheaper per training step than the paper's ResNet-18 on one CPU
#: thread; ``rlox_dp.networks.encoders``), bf16 encoder trunk where the CPU/GPU has native bf16, the
#: small U-Net and the paper's windows. Measured by ``benchmarks/pusht.py --obs image`` (Diffusion
#: Policy vs BC-chunk, learning curves in ``benchmarks/results/pusht_image.json``).
_PUSHT_IMAGE_COMMON: dict[str, Any] = {
    "n_obs_steps": 2,
    "horizon": 16,
    "n_action_steps": 8,
    "batch_size": 64,
    "lr": 3e-4,
    "vision_backbone": "compact",
    "vision_precision": "auto",
    "total_steps": 7500,
    "n_eval_episodes": 50,
    "n_eval_envs": 10,
}
_PUSHT_IMAGE_DIFFUSION: dict[str, Any] = {
    **_PUSHT_IMAGE_COMMON,
    "denoiser": "unet",
    "down_dims": (32, 64, 128),
    "noise_scheduler_type": "DDIM",
    "num_inference_steps": 10,
}

#: algorithm -> overrides, per env (and per PushT observation mode).
PENDULUM_PRESETS: dict[str, dict[str, Any]] = {
    "diffusion": _PENDULUM_DIFFUSION,
    "bc": {"total_steps": 2000},
    "bc_chunk": {"horizon": 8, "n_action_steps": 2, "total_steps": 2000},
}
INVERTED_DOUBLE_PENDULUM_PRESETS: dict[str, dict[str, Any]] = {
    "diffusion": _INVERTED_DOUBLE_PENDULUM_DIFFUSION,
    "bc": {"total_steps": 2000},
    "bc_chunk": {"horizon": 4, "n_action_steps": 1, "total_steps": 2000},
}
PUSHT_PRESETS: dict[str, dict[str, Any]] = {
    "diffusion": _PUSHT_DIFFUSION,
    "bc": {"total_steps": 15_000, "n_eval_episodes": 50, "n_eval_envs": 50},
    "bc_chunk": {"horizon": 16, "n_action_steps": 8, "total_steps": 15_000,
                 "n_eval_episodes": 50, "n_eval_envs": 50},
}
#: PushT's ``obs="image"`` presets; they replace :data:`PUSHT_PRESETS` in that mode.
PUSHT_IMAGE_PRESETS: dict[str, dict[str, Any]] = {
    "diffusion": _PUSHT_IMAGE_DIFFUSION,
    "bc_chunk": _PUSHT_IMAGE_COMMON,
    "bc": {k: v for k, v in _PUSHT_IMAGE_COMMON.items() if k not in ("horizon", "n_action_steps")},
}


def preset_for(algorithm: str, env_id: str, obs_mode: str | None = None) -> dict[str, Any]:
    """The recommended config overrides for ``algorithm`` on ``env_id`` (empty when none).

    ``obs_mode`` (PushT's ``"image"`` ...) selects the mode's own preset where there is one;
    otherwise the env's preset applies. Looked up in the env's
    :class:`~rlox_dp.envs.spec.EnvSpec` (:meth:`~rlox_dp.envs.spec.EnvSpec.preset`); a copy.
    """
    from rlox_dp.envs.spec import env_spec

    return env_spec(env_id).preset(algorithm, obs_mode)


class _RegistryView(Mapping[K, dict[str, Any]]):
    """A read-only mapping rebuilt from the env registry on every access (so it never goes stale)."""

    def __init__(self, build: Callable[[], dict[K, dict[str, Any]]]) -> None:
        self._build = build

    def __getitem__(self, key: K) -> dict[str, Any]:
        return self._build()[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._build())

    def __len__(self) -> int:
        return len(self._build())

    def __repr__(self) -> str:
        return repr(self._build())


def _presets_view() -> dict[tuple[str, str], dict[str, Any]]:
    from rlox_dp.envs.spec import ENV_REGISTRY

    return {(algorithm, env_id): dict(overrides) for env_id, spec in ENV_REGISTRY.items()
            for algorithm, overrides in spec.presets.items()}


def _obs_mode_presets_view() -> dict[tuple[str, str, str], dict[str, Any]]:
    from rlox_dp.envs.spec import ENV_REGISTRY

    return {(algorithm, env_id, mode): dict(overrides) for env_id, spec in ENV_REGISTRY.items()
            for mode, table in spec.obs_mode_presets.items() for algorithm, overrides in table.items()}


#: ``(algorithm, env_id)`` -> overrides of every registered env spec (read-only, copies).
PRESETS: Mapping[tuple[str, str], dict[str, Any]] = _RegistryView(_presets_view)
#: ``(algorithm, env_id, obs_mode)`` -> overrides that replace the env's preset in that mode.
OBS_MODE_PRESETS: Mapping[tuple[str, str, str], dict[str, Any]] = _RegistryView(_obs_mode_presets_view)
