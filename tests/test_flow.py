"""Flow matching: the Euler / Heun samplers with the exact velocity of Gaussian data, and the
``"flow"`` algorithm (training, Trainer, checkpoints, inference settings).

For ``a ~ N(mu, sigma^2)`` and the path ``x_t = (1 - t) a + t eps`` the exact velocity is
``E[eps - a | x_t] = -mu + (t - (1 - t) sigma^2) / s_t^2 (x_t - (1 - t) mu)`` with
``s_t^2 = (1 - t)^2 sigma^2 + t^2``, and its ODE carries ``x_1 = z`` to ``mu + sigma z``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import (
    ACT_SPACE,
    OBS_SPACE,
    TINY,
    loss_before_and_after_training,
    pendulum_demos,
    policy_config,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from rlox_dp import ConfigError, DemonstrationBuffer, Trainer
from rlox_dp.algorithms import FlowPolicy, get_algorithm_class
from rlox_dp.diffusion.flow_samplers import FlowSampler

MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
SIGMA = torch.tensor([0.3, 1.5], dtype=torch.float64)
FLOW_TINY = {**TINY["diffusion"], "num_train_timesteps": 100, "num_inference_steps": 4}


def gaussian_velocity(T: int, mu: torch.Tensor = MU, sigma: torch.Tensor = SIGMA):
    """Exact ``E[eps - a | x_t]`` for ``a ~ N(mu, diag(sigma^2))``, called at ``k = t T``."""

    def velocity(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        t = (k.to(x.dtype) / T).unsqueeze(-1)
        s2 = (1 - t) ** 2 * sigma**2 + t**2
        return -mu + (t - (1 - t) * sigma**2) / s2 * (x - (1 - t) * mu)

    return velocity


def _affine(sampler: FlowSampler, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Slope and offset per dimension of the deterministic map noise -> sample (float64)."""
    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    out = sampler.sample(gaussian_velocity(sampler.num_train_timesteps), (2, 2), n, init_noise=z)
    return (out[1] - out[0]).numpy(), out[0].numpy()


def test_exact_velocity_reproduces_the_data_moments_and_error_shrinks_with_steps() -> None:
    errors = {}
    for method in ("euler", "heun"):
        sampler = FlowSampler(1000, method)
        errors[method] = []
        for n in (5, 10, 20, 40, 100):
            a, b = _affine(sampler, n)
            errors[method].append(max(np.abs(a / SIGMA.numpy() - 1).max(), np.abs(b - MU.numpy()).max()))
    for method, order in (("euler", 1), ("heun", 2)):
        e = errors[method]
        assert all(e1 < e0 for e0, e1 in zip(e, e[1:], strict=False)), errors
        # doubling the steps divides the error by ~2 (Euler) or ~4 (Heun)
        rates = [e[i] / e[i + 1] for i in range(3)]
        assert all(2 ** order * 0.75 < r < 2 ** order * 1.35 for r in rates), (method, rates)
    assert errors["heun"][-1] < 5e-4 and errors["euler"][-1] < 2e-2  # at 100 steps
    assert all(h < e for h, e in zip(errors["heun"], errors["euler"], strict=True))


def test_monte_carlo_samples_have_the_data_moments() -> None:
    sampler = FlowSampler(100, "heun")
    n = 20_000
    x = sampler.sample(gaussian_velocity(100), (n, 2), 50, generator=torch.Generator().manual_seed(0),
                       dtype=torch.float64)
    s = SIGMA.numpy()
    assert np.all(np.abs(x.mean(0).numpy() - MU.numpy()) < 5 * s / math.sqrt(n) + 1e-3 * s)
    assert np.all(np.abs(x.std(0).numpy() - s) < 5 * s / math.sqrt(2 * n) + 2e-3 * s)  # Heun-50 bias: 1.7e-3


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 500), st.data(), st.sampled_from(["euler", "heun", "HEUN"]))
def test_plan_grid_and_evaluation_count(T: int, data: st.DataObject, method: str) -> None:
    sampler = FlowSampler(T, method)
    n = data.draw(st.integers(1, T))
    ks = sampler.timesteps(n).tolist()
    assert ks[0] == T and ks[-1] == 0 and all(k1 < k0 for k0, k1 in zip(ks, ks[1:], strict=False))
    plan = sampler.plan(n)
    pairs, steps = plan.pairs, plan.steps
    assert list(pairs) == list(zip(ks[:-1], ks[1:], strict=True))  # the plan chains the timesteps
    assert math.isclose(sum(s.dt for s in steps), -1.0, abs_tol=1e-12)
    calls: list[int] = []

    def velocity(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        calls.append(int(k[0]))
        return torch.zeros_like(x)

    sampler.sample(velocity, (1, 1), n)
    assert len(calls) == sampler.network_evaluations(n) == (n if method == "euler" else 2 * n - 1)
    assert set(calls) == set(plan.timesteps)  # every call is at the start of a step


def test_sampler_validation() -> None:
    with pytest.raises(ValueError, match="unknown flow sampler .rk4."):
        FlowSampler(10, "rk4")
    with pytest.raises(ValueError, match="num_inference_steps"):
        FlowSampler(10).plan(11)
    with pytest.raises(ValueError, match="model_output"):
        FlowSampler(10).sample(lambda x, k: x[:, :1], (2, 3), 2)


def _flow_policy(**overrides) -> tuple[FlowPolicy, DemonstrationBuffer]:
    config = policy_config("flow", {**FLOW_TINY, **overrides})
    buffer = DemonstrationBuffer(pendulum_demos(), config.window)
    return FlowPolicy(config, OBS_SPACE, ACT_SPACE, buffer.normalizer), buffer


def test_registered_config_and_inference_settings() -> None:
    assert get_algorithm_class("flow") is FlowPolicy
    policy, _ = _flow_policy(noise_scheduler_type="heun", num_inference_steps=3)
    assert policy.config.noise_scheduler_type == "Heun" and policy.sampler.method == "heun"
    with pytest.raises(ConfigError, match="noise_scheduler_type"):
        policy_config("flow", {**FLOW_TINY, "noise_scheduler_type": "DDIM"})
    calls = []
    original = policy.denoiser.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    policy.denoiser.forward = counting
    policy.eval()
    obs = {"state": torch.randn(2, 2, 3)}
    chunk = policy.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    assert chunk.shape == (2, policy.config.n_action_steps, 1) and len(calls) == 5  # Heun 3: 2*3-1
    policy.configure_inference("Euler", 2)
    calls.clear()
    policy.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    assert len(calls) == 2
    with pytest.raises(ConfigError, match="num_inference_steps"):
        policy.configure_inference(num_inference_steps=101)


def test_training_reduces_the_loss_and_checkpoint_round_trip(tmp_path) -> None:
    config = {**FLOW_TINY, "lr": 3e-3, "total_steps": 60, "use_ema": False}
    trainer = Trainer("flow", env="Pendulum-v1", config=config, demos=pendulum_demos(), seed=0,
                      device="cpu", log_dir=tmp_path / "run", progress=False, preset=False)
    before, after = loss_before_and_after_training(trainer)
    assert after < 0.7 * before, (before, after)
    path = trainer.save(tmp_path / "flow.safetensors")
    loaded = Trainer.load(path, device="cpu", progress=False)
    assert isinstance(loaded.policy, FlowPolicy) and loaded.config == trainer.config
    obs = {"state": torch.randn(2, 2, 3)}
    a = trainer.eval_policy.eval().predict_action_chunk(obs, torch.Generator().manual_seed(3))
    b = loaded.eval_policy.eval().predict_action_chunk(obs, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_flow_sampler_names_follow_the_registry_rule() -> None:
    from rlox_dp.diffusion.flow_samplers import FLOW_SAMPLERS, FlowSampler

    assert FLOW_SAMPLERS == ("euler", "heun")
    assert FlowSampler(10, "HEUN").method == "heun"
    assert [FlowSampler(10, m).network_evaluations(4) for m in FLOW_SAMPLERS] == [4, 7]
    with pytest.raises(ValueError, match=r"unknown flow sampler 'huen'. Did you mean 'heun'\?"):
        FlowSampler(10, "huen")
