"""Contract tests over the registries: every registered algorithm, denoiser and sampler, including
ones registered later, is checked here without a line of its own.

- algorithms (:func:`available_algorithms`): build from the defaults with tiny settings; finite
  loss with gradients; action chunks of the right shape inside the action bounds; seeded and
  fixed-noise inference are deterministic (fixed noise: a row's actions depend on its own
  observations only); the policy file round trip acts the same; ``select_action`` / ``predict``.
- denoisers (:func:`available_denoisers`): output shape, gradients reach every parameter, the
  conditioning fast path (``conditioned``) equals ``forward``, rows are independent, bad shapes
  are refused.
- samplers (:func:`available_samplers`): with the exact denoiser of Gaussian data the samples have
  the data's mean and standard deviation; point-mass data is reproduced at any step count; the
  step count is honoured (one model call per step, at decreasing timesteps in ``[0, T)``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch
from helpers import TINY, pendulum_demos

from rlox_dp import (
    DemonstrationBuffer,
    Trainer,
    available_algorithms,
    get_algorithm_class,
    load_policy,
)
from rlox_dp.acceleration import accelerate
from rlox_dp.diffusion import available_samplers, make_sampler, make_schedule
from rlox_dp.networks import available_denoisers, build_denoiser, denoiser_options

#: Pendulum-v1's spaces (the teacher of a distilling algorithm is a Pendulum-v1 run).
OBS_SPACE = gym.spaces.Dict({"state": gym.spaces.Box(np.array([-1, -1, -8], np.float32),
                                                    np.array([1, 1, 8], np.float32))})
ACT_SPACE = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)

#: small values for whichever of these options an algorithm's config or a denoiser has.
TINY_OPTIONS = {
    "down_dims": [16, 32], "diffusion_step_embed_dim": 16, "n_groups": 4, "kernel_size": 3,
    "num_train_timesteps": 10, "horizon": 8, "n_obs_steps": 2, "hidden_dim": 32, "n_layers": 2,
    "timestep_embed_dim": 16, "n_layer": 2, "n_head": 2, "n_emb": 32,
}


# ----------------------------------------------------------------------------------- algorithms
@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> str:
    """An untrained tiny Diffusion Policy checkpoint, for algorithms that distill a teacher."""
    tmp = tmp_path_factory.mktemp("teacher")
    trainer = Trainer("diffusion", env="Pendulum-v1", config=TINY["diffusion"], demos=pendulum_demos(),
                      device="cpu", log_dir=tmp / "run", progress=False, preset=False)
    return str(trainer.save(tmp / "teacher.safetensors"))


def _config_fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(get_algorithm_class(name).config_class)}


def build_policy(name: str, request: pytest.FixtureRequest):
    """Algorithm ``name`` built from its defaults with tiny settings, on the pendulum demos."""
    cls = get_algorithm_class(name)
    fields = _config_fields(name)
    if "teacher" in fields:  # distillation: the window, network and schedule are the teacher's
        settings = {"teacher": request.getfixturevalue("teacher_path")}
    else:
        settings = TINY.get(name, TINY_OPTIONS)
    config = cls.config_class.from_dict({k: v for k, v in settings.items() if k in fields})
    buffer = DemonstrationBuffer(pendulum_demos(), config.window)
    return cls(config, OBS_SPACE, ACT_SPACE, buffer.normalizer), buffer


def _obs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A raw observation window ``(B, T_o=2, 3)`` (every contract config has ``T_o = 2``)."""
    return {"state": np.random.default_rng(seed).normal(size=(batch, 2, 3)).astype(np.float32)}


@pytest.mark.parametrize("name", available_algorithms())
def test_default_config_round_trips(name):
    config_class = get_algorithm_class(name).config_class
    config = config_class()
    assert config.n_action_steps >= 1
    assert config_class.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("name", available_algorithms())
def test_loss_is_finite_with_gradients_and_leaves_the_batch_alone(name, request):
    policy, buffer = build_policy(name, request)
    batch = buffer.sample(8, generator=torch.Generator().manual_seed(0))
    before = {"action": batch.action.clone(), "pad": batch.action_is_pad.clone(),
              "state": batch.obs["state"].clone()}
    loss, info = policy.compute_loss(batch, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in info.values())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.parameters())
    assert torch.equal(before["action"], batch.action) and torch.equal(before["pad"], batch.action_is_pad)
    assert torch.equal(before["state"], batch.obs["state"])


@pytest.mark.parametrize("name", available_algorithms())
def test_action_chunks_shape_bounds_and_seeds(name, request):
    policy, _ = build_policy(name, request)
    policy.eval()
    chunk = policy.predict_action_chunk(_obs(4), torch.Generator().manual_seed(3))
    assert chunk.shape == (4, policy.config.n_action_steps, 1) and torch.isfinite(chunk).all()
    assert (chunk >= -2.0).all() and (chunk <= 2.0).all()
    again = policy.predict_action_chunk(_obs(4), torch.Generator().manual_seed(3))
    assert torch.equal(chunk, again)


@pytest.mark.parametrize("name", available_algorithms())
def test_fixed_noise_is_deterministic_and_per_row(name, request):
    policy, _ = build_policy(name, request)
    policy.eval()
    policy.fixed_noise = True
    obs_a, obs_b = _obs(2, seed=1), _obs(2, seed=2)
    mixed = {"state": np.stack([obs_a["state"][0], obs_b["state"][1]])}
    first, second = policy.predict_action_chunk(obs_a), policy.predict_action_chunk(obs_a)
    assert torch.equal(first, second)
    # row 0 sees the same observations in both batches: its actions must not depend on row 1's
    torch.testing.assert_close(policy.predict_action_chunk(mixed)[0], first[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", available_algorithms())
def test_policy_file_round_trip_acts_the_same(name, request, tmp_path):
    policy, _ = build_policy(name, request)
    accelerate(policy).eval()  # as load_policy does: the inference fast paths on
    loaded = load_policy(policy.save(tmp_path / "policy.safetensors", env="Pendulum-v1"))
    assert type(loaded) is type(policy) and loaded.config == policy.config
    for seed in (0, 1):
        expected = policy.predict_action_chunk(_obs(3), torch.Generator().manual_seed(seed))
        got = loaded.predict_action_chunk(_obs(3), torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", available_algorithms())
def test_select_action_and_predict(name, request):
    policy, _ = build_policy(name, request)
    policy.eval()
    states = np.random.default_rng(0).normal(size=(policy.config.n_action_steps + 2, 3, 3))
    for state in states.astype(np.float32):  # past one replan
        action = policy.select_action({"state": state})
        assert action.shape == (3, 1) and np.isfinite(action).all() and np.all(np.abs(action) <= 2.0)
    policy.reset()
    single, _ = policy.predict(states[0, 0].astype(np.float32), episode_start=True)
    assert single.shape == (1,) and single.dtype == np.float32 and abs(float(single[0])) <= 2.0


# ------------------------------------------------------------------------------------ denoisers
B, H, D_ACT, COND = 3, 8, 2, 6


def build_tiny_denoiser(name: str) -> torch.nn.Module:
    options = {k: v for k, v in TINY_OPTIONS.items() if k in denoiser_options(name)}
    options.pop("horizon", None)
    torch.manual_seed(0)
    return build_denoiser(name, action_dim=D_ACT, horizon=H, cond_dim=COND, **options)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, D_ACT, generator=g), torch.tensor([9, 4, 0]),
            torch.randn(B, COND, generator=g))


@pytest.mark.parametrize("name", available_denoisers())
def test_denoiser_shape_and_gradients_reach_every_parameter(name):
    net = build_tiny_denoiser(name)
    x, t, cond = _inputs()
    out = net(x, t, cond)
    assert out.shape == (B, H, D_ACT) and torch.isfinite(out).all()
    out.square().mean().backward()
    unused = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # (data-parallel training would fail on parameters without gradients)


@pytest.mark.parametrize("name", available_denoisers())
def test_denoiser_conditioning_fast_path_equals_forward(name):
    net = build_tiny_denoiser(name).eval()
    x, _, cond = _inputs(1)
    timesteps = [9, 6, 3, 0]
    with torch.no_grad():
        fast = net.conditioned(cond, timesteps)
        for step in timesteps:
            t = torch.full((B,), step, dtype=torch.long)
            torch.testing.assert_close(fast(x, t), net(x, t, cond), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(net(x, torch.tensor(6), cond), net(x, torch.full((B,), 6), cond))


@pytest.mark.parametrize("name", available_denoisers())
def test_denoiser_rows_are_independent_and_bad_shapes_refused(name):
    net = build_tiny_denoiser(name).eval()
    x, t, cond = _inputs(2)
    with torch.no_grad():
        whole = net(x, t, cond)
        for i in range(B):
            torch.testing.assert_close(net(x[i:i + 1], t[i:i + 1], cond[i:i + 1]), whole[i:i + 1],
                                       rtol=1e-5, atol=1e-5)
        for bad in ((x[:, :-1], t, cond), (x, t, cond[:, :-1]), (x, t[:-1], cond)):
            with pytest.raises(ValueError):
                net(*bad)


# ------------------------------------------------------------------------------------- samplers
T = 1000
SCHEDULE = make_schedule("squaredcos_cap_v2", T)
MU = torch.tensor([0.5, -1.0], dtype=torch.float64)
SIGMA = torch.tensor([0.3, 1.5], dtype=torch.float64)
Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def posterior_mean_model(prediction_type: str, mu: torch.Tensor, sigma: torch.Tensor) -> Denoise:
    """The exact E[eps | x_t] or E[x_0 | x_t] for x_0 ~ N(mu, diag(sigma^2)): what a diffusion
    sampler's model estimates. ``x_t`` ``(B, D)`` -> ``(B, D)``."""
    ab_table = SCHEDULE.alphas_cumprod

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = ab_table[t].unsqueeze(-1).to(x_t.dtype)
        resid = (x_t - ab.sqrt() * mu) / (ab * sigma**2 + 1 - ab)
        return (1 - ab).sqrt() * resid if prediction_type == "epsilon" else mu + ab.sqrt() * sigma**2 * resid

    return denoise


def consistency_model(prediction_type: str, mu: torch.Tensor, sigma: torch.Tensor) -> Denoise:
    """The exact consistency function of N(mu, diag(sigma^2)) (the probability-flow ODE keeps
    the standardized coordinate): ``f(x_t, t) = mu + sigma / s_t (x_t - sqrt(ab_t) mu)``."""
    assert prediction_type == "sample"
    ab_table = SCHEDULE.alphas_cumprod

    def f(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = ab_table[t].unsqueeze(-1).to(x_t.dtype)
        return mu + sigma / (ab * sigma**2 + 1 - ab).sqrt() * (x_t - ab.sqrt() * mu)

    return f


#: the exact model a sampler expects; any other sampler is a diffusion sampler of the posterior mean.
EXACT_MODEL = {"consistency": consistency_model}


def exact_model(name: str, prediction_type: str, mu: torch.Tensor, sigma: torch.Tensor) -> Denoise:
    return EXACT_MODEL.get(name, posterior_mean_model)(prediction_type, mu, sigma)


@pytest.mark.parametrize("name", available_samplers())
def test_sampler_reproduces_gaussian_data_with_the_exact_model(name):
    sampler = make_sampler(name, SCHEDULE, clip_sample=False)
    n = 4000
    x = sampler.sample(exact_model(name, sampler.prediction_type, MU, SIGMA), (n, 2), T,
                       generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    se_mean, se_std = SIGMA / math.sqrt(n), SIGMA / math.sqrt(2 * n)
    assert torch.all((x.mean(0) - MU).abs() < 5 * se_mean + 0.01 * SIGMA), x.mean(0)
    assert torch.all((x.std(0) - SIGMA).abs() < 5 * se_std + 0.02 * SIGMA), x.std(0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("name", available_samplers())
def test_sampler_reproduces_point_mass_data_at_any_step_count(name, prediction_type):
    if name in EXACT_MODEL and prediction_type != make_sampler(name, SCHEDULE).prediction_type:
        pytest.skip(f"{name} samples from its own model's prediction type only")
    mu, zero = torch.tensor([0.25, -0.5], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    sampler = make_sampler(name, SCHEDULE, prediction_type=prediction_type)
    for steps in (1, 2, 5, 50):
        x = sampler.sample(exact_model(name, prediction_type, mu, zero), (16, 2), steps,
                           generator=torch.Generator().manual_seed(steps), dtype=torch.float64)
        torch.testing.assert_close(x, mu.expand(16, 2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", available_samplers())
def test_sampler_honours_the_step_count(name):
    sampler = make_sampler(name, SCHEDULE)
    model = exact_model(name, sampler.prediction_type, MU, SIGMA)
    calls: list[int] = []

    def counting(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.shape == (x_t.shape[0],) and bool((t == t[0]).all())
        calls.append(int(t[0]))
        return model(x_t, t)

    for steps in (1, 3, 10):
        calls.clear()
        x = sampler.sample(counting, (4, 2), steps, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
        assert x.shape == (4, 2) and torch.isfinite(x).all()
        assert len(calls) == steps and all(0 <= c < T for c in calls)
        assert calls == sorted(set(calls), reverse=True)  # distinct, decreasing
        first = sampler.sample(model, (4, 2), steps, generator=torch.Generator().manual_seed(5),
                               dtype=torch.float64)
        second = sampler.sample(model, (4, 2), steps, generator=torch.Generator().manual_seed(5),
                                dtype=torch.float64)
        assert torch.equal(first, second)
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="num_inference_steps"):
            sampler.sample(model, (4, 2), bad)
