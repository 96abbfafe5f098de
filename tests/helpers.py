"""Helpers shared by the test modules: tiny demonstrations, tiny configs, loss recording and
benchmark loading. Import them with ``from helpers import ...`` (``tests/`` is on the import path
through pytest's ``pythonpath`` setting in ``pyproject.toml``); fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import socket
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import gymnasium as gym
import numpy as np
import pytest
import torch

from rlox_dp.buffers import DemonstrationBuffer, Demonstrations
from rlox_dp.diffusion import NoiseSchedule, make_schedule

__all__ = ["ACT_SPACE", "BENCHMARKS", "COSINE_100", "MU", "OBS_SPACE", "SIGMA", "TINY",
           "assert_conditioned_matches_forward", "build", "free_port", "gaussian_denoiser", "load_benchmark",
           "loss_before_and_after_training", "pendulum_demos", "policy_config", "record_losses"]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: tiny network / short schedule settings per algorithm (fast on 2 CPU cores).
TINY = {
    "diffusion": {"down_dims": [16, 32], "diffusion_step_embed_dim": 16, "n_groups": 4,
                  "num_train_timesteps": 10, "horizon": 8, "n_obs_steps": 2, "batch_size": 32,
                  "lr_warmup_steps": 2, "n_eval_episodes": 2, "n_eval_envs": 2, "log_every": 5},
    "bc": {"hidden_dim": 32, "n_layers": 2, "batch_size": 32, "lr_warmup_steps": 2,
           "n_eval_episodes": 2, "n_eval_envs": 2, "log_every": 5},
    "bc_chunk": {"hidden_dim": 32, "n_layers": 2, "horizon": 8, "batch_size": 32, "lr_warmup_steps": 2,
                 "n_eval_episodes": 2, "n_eval_envs": 2, "log_every": 5},
}


def policy_config(algorithm: str, values: dict):
    """``algorithm``'s policy config from a flat dict such as :data:`TINY` (its training keys,
    e.g. ``batch_size``, are left out: they belong to the ``TrainingConfig``)."""
    from rlox_dp import get_algorithm_class
    from rlox_dp.training.config import split_config

    cls = get_algorithm_class(algorithm).config_class
    return cls.from_dict(split_config(cls, values)[0])


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` imported as a module (benchmarks are not a package)."""
    spec = importlib.util.spec_from_file_location(f"rlox_dp_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_conditioned_matches_forward(denoise, forward, x, steps: list[int], unplanned: int) -> None:
    """A per-chunk conditioned ``denoise(x, t)`` (``Denoiser.conditioned`` or a fast path) equals
    ``forward(x, t)`` at every planned timestep, with a different timestep per sample and with a
    0-d timestep; an unplanned timestep raises an IndexError. ``x``: ``(B, H, D)``."""
    import torch

    batch = x.shape[0]
    with torch.no_grad():
        for t in steps:
            t_batch = torch.full((batch,), t)
            torch.testing.assert_close(denoise(x, t_batch), forward(x, t_batch), rtol=1e-5, atol=1e-5)
        mixed = torch.tensor([steps[(3 * i) % len(steps)] for i in range(batch)])
        torch.testing.assert_close(denoise(x, mixed), forward(x, mixed), rtol=1e-5, atol=1e-5)
        scalar = torch.tensor(steps[len(steps) // 2])
        torch.testing.assert_close(denoise(x, scalar), forward(x, scalar), rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError):
        denoise(x, torch.full((batch,), unplanned))


def pendulum_demos(n_episodes: int = 4, length: int = 40, seed: int = 0) -> Demonstrations:
    """Pendulum-shaped demonstrations from a damping controller (no expert training needed):
    ``n_episodes`` episodes of ``length`` steps, ``state`` ``(N, 3)``, actions ``(N, 1)`` in [-2, 2]."""
    rng = np.random.default_rng(seed)
    obs, acts, ends = [], [], []
    for _ in range(n_episodes):
        theta = rng.uniform(-np.pi, np.pi)
        omega = rng.uniform(-1, 1)
        for _ in range(length):
            obs.append([np.cos(theta), np.sin(theta), omega])
            a = float(np.clip(-2.0 * omega - 1.0 * np.sin(theta), -2, 2))
            acts.append([a])
            omega = float(np.clip(omega + 0.05 * (3 * np.sin(theta) * 5 + 3.0 * a), -8, 8))
            theta = theta + 0.05 * omega
        ends.append(len(acts))
    return Demonstrations(
        observations={"state": np.asarray(obs, dtype=np.float32)},
        actions=np.asarray(acts, dtype=np.float32),
        episode_ends=np.asarray(ends, dtype=np.int64),
    )


def record_losses(trainer) -> list[float]:
    """Wrap ``trainer.policy.compute_loss`` so every training step appends its loss to the list."""
    losses: list[float] = []
    original = trainer.policy.compute_loss

    def record(batch, generator=None, **kwargs):
        loss, info = original(batch, generator, **kwargs)
        losses.append(loss.item())
        return loss, info

    trainer.policy.compute_loss = record
    return losses


#: the spaces of :func:`pendulum_demos` (3-D state, 1-D action in [-2, 2]).
OBS_SPACE = gym.spaces.Dict({"state": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)})
ACT_SPACE = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def build(name: str, **overrides):
    """A tiny ``name`` policy (``TINY`` settings + ``overrides``) and the buffer of
    :func:`pendulum_demos` whose normalizer it uses: ``(policy, buffer)``."""
    from rlox_dp.algorithms import get_algorithm_class

    cls = get_algorithm_class(name)
    config = policy_config(name, {**TINY[name], **overrides})
    buffer = DemonstrationBuffer(pendulum_demos(), config.window)
    return cls(config, OBS_SPACE, ACT_SPACE, buffer.normalizer), buffer


#: Gaussian data ``x0 ~ N(MU, diag(SIGMA^2))`` (float64, 2-D) and the paper's 100-step cosine
#: schedule: the closed-form setting of the sampler tests.
MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
SIGMA = torch.tensor([0.3, 1.5], dtype=torch.float64)
COSINE_100 = make_schedule("squaredcos_cap_v2", 100)


def gaussian_denoiser(
    sched: NoiseSchedule, prediction_type: str, mu: torch.Tensor, sigma: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Exact E[eps | x_t] or E[x0 | x_t] for x0 ~ N(mu, diag(sigma^2)); x_t is (B, D)."""
    ab_table = sched.alphas_cumprod

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = ab_table[t].unsqueeze(-1).to(x_t.dtype)
        m, s2 = mu.to(x_t.dtype), (sigma**2).to(x_t.dtype)
        resid = (x_t - ab.sqrt() * m) / (ab * s2 + 1 - ab)
        if prediction_type == "epsilon":
            return (1 - ab).sqrt() * resid
        return m + ab.sqrt() * s2 * resid

    return denoise


def loss_before_and_after_training(trainer) -> tuple[float, float]:
    """The policy's loss on one fixed batch and noise, before and after ``trainer.train()``."""
    batch = trainer.buffer.sample(128, generator=torch.Generator().manual_seed(1))

    def fixed_loss() -> float:
        with torch.no_grad():
            return trainer.policy.compute_loss(batch, torch.Generator().manual_seed(2))[0].item()

    before = fixed_loss()
    trainer.train(evaluate=False)
    return before, fixed_loss()


def free_port() -> int:
    """A free TCP port on localhost (for a torch.distributed rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
