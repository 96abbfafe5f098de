"""Consistency distillation (algorithm ``"consistency"``) and multistep consistency sampling.

The sampler tests use the exact consistency function of Gaussian data ``N(mu, sigma^2)``: the
probability-flow ODE keeps the standardized coordinate, so ``f(x_t, t) = mu + sigma / s_t
(x_t - sqrt(ab_t) mu)`` with ``s_t = sqrt(ab_t sigma^2 + 1 - ab_t)``.
"""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import (
    ACT_SPACE,
    COSINE_100,
    MU,
    OBS_SPACE,
    SIGMA,
    TINY,
    gaussian_denoiser,
    loss_before_and_after_training,
    pendulum_demos,
)

from rlox_dp import ConfigError, DemonstrationBuffer, Trainer
from rlox_dp.acceleration import accelerate
from rlox_dp.algorithms import (
    ConsistencyConfig,
    ConsistencyPolicy,
    DiffusionConfig,
    get_algorithm_class,
)
from rlox_dp.algorithms.consistency import inherited_fields, teacher_ode_step, teacher_step_table
from rlox_dp.diffusion import ConsistencySampler, DDIMSampler

N = 20_000


def exact_consistency_function(mu: torch.Tensor = MU, sigma: torch.Tensor = SIGMA):
    ab_table = COSINE_100.alphas_cumprod

    def f(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = ab_table[t].unsqueeze(-1).to(x_t.dtype)
        spread = (ab * sigma**2 + 1 - ab).sqrt()
        return mu + sigma / spread * (x_t - ab.sqrt() * mu)

    return f


def _spread(t: int, sigma: float) -> float:
    ab = float(COSINE_100.alphas_cumprod[t])
    return math.sqrt(ab * sigma**2 + 1 - ab)


@pytest.mark.parametrize("steps", [1, 2, 3])
@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_multistep_sampling_moments(steps: int, scale: float) -> None:
    """Exact moments of the chain: start N(0, scale^2); each step re-noises and maps back."""
    sampler = ConsistencySampler(COSINE_100, clip_sample=False, init_noise_scale=scale)
    x = sampler.sample(exact_consistency_function(), (N, 2), steps,
                       generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ab = COSINE_100.alphas_cumprod
    for d, (mu, sigma) in enumerate(zip(MU.tolist(), SIGMA.tolist(), strict=True)):
        ts = sampler.timesteps(steps).tolist()
        a0 = math.sqrt(float(ab[ts[0]]))
        mean = mu + sigma / _spread(ts[0], sigma) * (0.0 - a0 * mu)
        std = sigma / _spread(ts[0], sigma) * scale
        for t in ts[1:]:
            abt = float(ab[t])
            noisy_mean, noisy_std = math.sqrt(abt) * mean, math.sqrt(abt * std**2 + 1 - abt)
            mean = mu + sigma / _spread(t, sigma) * (noisy_mean - math.sqrt(abt) * mu)
            std = sigma / _spread(t, sigma) * noisy_std
        se = std / math.sqrt(N)
        assert abs(x[:, d].mean().item() - mean) < 5 * se
        assert abs(x[:, d].std().item() - std) < 5 * se
        if scale == 1.0:  # the exact consistency function reproduces the data at any step count
            assert abs(mean - mu) < 1e-3 * sigma and abs(std - sigma) < 1e-3 * sigma
    if scale == 0.1 and steps == 1:
        assert torch.all(x.std(0) < 0.2 * SIGMA)  # reduced initial variance: far narrower


def test_sampler_coefficients_and_noise() -> None:
    sampler = ConsistencySampler(COSINE_100)
    plan = sampler.plan(3)
    pairs, coefs = plan.pairs, plan.steps
    ab = COSINE_100.alphas_cumprod
    for (_, t_prev), c in zip(pairs, coefs, strict=True):
        ab_prev = float(ab[t_prev]) if t_prev >= 0 else 1.0
        assert c.coef_xt == 0.0
        assert math.isclose(c.coef_x0, math.sqrt(ab_prev)) and math.isclose(c.std, math.sqrt(1 - ab_prev))
    x, noises = sampler.draw_noise((4, 2), 3, generator=torch.Generator().manual_seed(0))
    assert [z is not None for z in noises] == [True, True, False]
    init = torch.ones(4, 2)
    scaled = ConsistencySampler(COSINE_100, init_noise_scale=0.5)
    assert torch.equal(scaled.draw_noise((4, 2), 1, init_noise=init)[0], init)  # given: as is
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(scaled.draw_noise((4, 2), 1, generator=g)[0], 0.5 * x)
    with pytest.raises(ValueError, match="init_noise_scale"):
        ConsistencySampler(COSINE_100, init_noise_scale=0.0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_teacher_ode_step_against_the_exact_flow(prediction_type: str) -> None:
    """Exact Gaussian teacher: both solvers approach the exact PF-ODE step as the stride shrinks;
    the 2nd-order one is 10x closer inside the schedule; steps past t = 0 give the clean estimate."""
    config = DiffusionConfig.from_dict({"prediction_type": prediction_type, "clip_sample": False})
    denoise = gaussian_denoiser(COSINE_100, prediction_type, MU, SIGMA)
    ab = COSINE_100.alphas_cumprod

    def spread(k: torch.Tensor) -> torch.Tensor:
        return (ab[k].unsqueeze(-1) * SIGMA**2 + 1 - ab[k].unsqueeze(-1)).sqrt()

    t = torch.tensor([40, 60, 80])
    x = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = {}
    for stride in (2, 10):
        s = t - stride
        exact = ab[s].sqrt().unsqueeze(-1) * MU + spread(s) / spread(t) * (x - ab[t].sqrt().unsqueeze(-1) * MU)
        table = teacher_step_table(COSINE_100, stride, prediction_type)
        for solver in ("ddim", "heun"):
            got = teacher_ode_step(denoise, x, t, s, table, config, solver)
            errors[solver, stride] = (got - exact).abs().max().item()
    for solver in ("ddim", "heun"):
        assert errors[solver, 2] < errors[solver, 10] / 5, errors
    for stride in (2, 10):
        assert errors["heun", stride] < errors["ddim", stride] / 5, errors
    t, s = torch.tensor([3, 7]), torch.tensor([-7, -3])
    clean = teacher_ode_step(denoise, x[:2], t, s, teacher_step_table(COSINE_100, 10, prediction_type),
                             config, "heun")
    x0 = denoise(x[:2], t) if prediction_type == "sample" else COSINE_100.predict_x0(x[:2], denoise(x[:2], t), t)
    torch.testing.assert_close(clean, x0)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    """A tiny epsilon-prediction Diffusion Policy teacher trained for a few steps."""
    tmp = tmp_path_factory.mktemp("teacher")
    config = {**TINY["diffusion"], "total_steps": 5, "clip_sample_range": 1.5}
    trainer = Trainer("diffusion", env="Pendulum-v1", config=config, demos=pendulum_demos(),
                      device="cpu", log_dir=tmp / "run", progress=False, preset=False)
    trainer.train(evaluate=False)
    return trainer.save(tmp / "teacher.safetensors")


STUDENT = {"batch_size": 32, "lr_warmup_steps": 2, "log_every": 5, "n_eval_episodes": 0}


def _student(teacher_path, tmp_path, **config) -> Trainer:
    return Trainer("consistency", env="Pendulum-v1",
                   config={"teacher": str(teacher_path), **STUDENT, **config},
                   demos=pendulum_demos(), device="cpu", log_dir=tmp_path / "student",
                   progress=False, preset=False)


def test_config_inherits_the_teacher_and_rejects_mismatches(teacher_path, tmp_path) -> None:
    assert get_algorithm_class("consistency") is ConsistencyPolicy
    config = ConsistencyConfig.from_dict({"teacher": str(teacher_path), "horizon": 8})
    teacher = Trainer.load(teacher_path, device="cpu", progress=False).config
    assert {"horizon", "n_obs_steps", "down_dims", "num_train_timesteps", "beta_schedule",
            "clip_sample_range", "obs_normalization"} <= set(inherited_fields())
    assert all(getattr(config, k) == getattr(teacher, k) for k in inherited_fields())
    assert config.prediction_type == "sample" and config.num_inference_steps == 1
    assert type(teacher).from_dict(config.teacher_config) == teacher  # as stored (JSON lists)
    for field, value in (("horizon", 16), ("down_dims", [8, 16]), ("num_train_timesteps", 20)):
        with pytest.raises(ConfigError, match=rf"'{field}'.*teacher"):
            ConsistencyConfig.from_dict({"teacher": str(teacher_path), field: value})
    with pytest.raises(ConfigError, match="'teacher'.*does not exist"):
        ConsistencyConfig.from_dict({"teacher": str(tmp_path / "missing.safetensors")})
    bc = Trainer("bc", env="Pendulum-v1", config=TINY["bc"], demos=pendulum_demos(), device="cpu",
                 log_dir=tmp_path / "bc", progress=False, preset=False)
    with pytest.raises(ConfigError, match="'teacher'.*'bc' checkpoint"):
        ConsistencyConfig.from_dict({"teacher": str(bc.save(tmp_path / "bc.safetensors"))})
    for field, value in (("distillation_stride", 10), ("dsm_weight", -1.0), ("init_noise_scale", 1.5)):
        with pytest.raises(ConfigError, match=field):
            ConsistencyConfig.from_dict({"teacher": str(teacher_path), field: value})


def test_spaces_and_normalizer_must_match_the_teacher(teacher_path, tmp_path) -> None:
    config = ConsistencyConfig.from_dict({"teacher": str(teacher_path)})
    buffer = DemonstrationBuffer(pendulum_demos(), config.window)
    other_actions = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    with pytest.raises(ValueError, match="spaces"):
        ConsistencyPolicy(config, OBS_SPACE, other_actions, buffer.normalizer)
    with pytest.raises(ValueError, match="normalization statistics"):
        Trainer("consistency", env="Pendulum-v1", config={"teacher": str(teacher_path)},
                demos=pendulum_demos(seed=1), device="cpu", log_dir=tmp_path / "s",
                progress=False, preset=False)


def test_warm_start_training_and_checkpoint_round_trip(teacher_path, tmp_path) -> None:
    trainer = _student(teacher_path, tmp_path, total_steps=8, distillation_stride=3)
    teacher = trainer.policy.teacher
    student_state = trainer.policy.state_dict()
    assert all(torch.equal(v, student_state[k]) for k, v in teacher.state_dict().items())
    assert not any("teacher" in k for k in student_state)  # the teacher is not saved
    assert all(not p.requires_grad for p in teacher.parameters())
    assert copy.deepcopy(trainer.policy).teacher is None  # EMA copies leave it out
    # the teacher's ODE step: DDIM (eta 0) from t to t - stride, to the clean end below it
    table = trainer.policy._teacher_step_table(torch.device("cpu"))
    pairs = [(t, t - 3 if t >= 3 else -1) for t in range(10)]
    expected = DDIMSampler(trainer.policy.schedule, "epsilon", False).coefficients(pairs)
    torch.testing.assert_close(table[:, :5], torch.tensor(expected, dtype=table.dtype))
    assert torch.all(table[:3, 5] == 0) and torch.all(table[3:, 5] > 0)
    before = [p.detach().clone() for p in teacher.parameters()]
    metrics = trainer.train(evaluate=False)
    assert math.isfinite(metrics["loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    loaded = Trainer.load(trainer.save(tmp_path / "student.safetensors"), device="cpu",
                          progress=False)
    assert loaded.config == trainer.config and isinstance(loaded.policy, ConsistencyPolicy)
    obs = {"state": torch.randn(2, 2, 3)}
    for n in (1, 3):
        for policy in (trainer.eval_policy, loaded.eval_policy):
            policy.eval()
            policy.configure_inference(num_inference_steps=n, init_noise_scale=0.5)
        a = trainer.eval_policy.predict_action_chunk(obs, torch.Generator().manual_seed(4))
        b = loaded.eval_policy.predict_action_chunk(obs, torch.Generator().manual_seed(4))
        assert torch.equal(a, b)
    inference_only = ConsistencyPolicy(loaded.config.replace(teacher=None), OBS_SPACE, ACT_SPACE,
                                       loaded.policy.normalizer)
    with pytest.raises(RuntimeError, match="no teacher"):
        inference_only.compute_loss(trainer.buffer.sample(4))
    # the saved student acts without its teacher's file (a warning says it cannot train)
    config = loaded.config.replace(teacher=str(tmp_path / "gone.safetensors"))
    with pytest.warns(UserWarning, match="can act but not train"):
        orphan = ConsistencyPolicy(config, OBS_SPACE, ACT_SPACE, loaded.policy.normalizer)
    orphan.load_state_dict(loaded.eval_policy.state_dict())
    accelerate(orphan)  # the inference fast paths, as the Trainer's policies: equal chunks
    orphan.eval().configure_inference(num_inference_steps=3, init_noise_scale=0.5)
    assert torch.equal(orphan.predict_action_chunk(obs, torch.Generator().manual_seed(4)), b)


def test_distillation_reduces_the_consistency_loss(teacher_path, tmp_path) -> None:
    """On a fixed batch and noise, 20 steps lower the loss (warm start: only the consistency and
    denoising gaps remain)."""
    trainer = _student(teacher_path, tmp_path, total_steps=20, lr=1e-3, use_ema=False)
    before, after = loss_before_and_after_training(trainer)
    assert after < 0.8 * before, (before, after)
