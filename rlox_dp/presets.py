"""Per-env recommended settings, applied under the user's config (like rl-zoo's hyperparameters).

The algorithm configs' defaults are the paper's (a 63 M-parameter U-Net for 10 Hz position
control). Small torque-control tasks such as Pendulum-v1 need a smaller network, shorter
open-loop execution and fewer steps to train in minutes on a CPU; those settings live here, one
dict per ``(algorithm, env)``, measured by ``benchmarks/pendulum.py``. A user's own config keys
always win, and ``Trainer(..., preset=False)`` (CLI ``--no-preset``) turns presets off.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "preset_for"]

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

PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("diffusion", "Pendulum-v1"): _PENDULUM_DIFFUSION,
    ("bc", "Pendulum-v1"): {"total_steps": 2000},
    ("bc_chunk", "Pendulum-v1"): {"horizon": 8, "n_action_steps": 2, "total_steps": 2000},
}


def preset_for(algorithm: str, env_id: str) -> dict[str, Any]:
    """The recommended config overrides for ``algorithm`` on ``env_id`` (empty when none)."""
    return dict(PRESETS.get((algorithm, env_id), {}))
