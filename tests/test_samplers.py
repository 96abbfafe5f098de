"""Tests of the DDPM / DDIM samplers (rlox_dp.diffusion.samplers).

The distribution tests use the exact optimal denoiser for Gaussian data x0 ~ N(mu, sigma^2)
(independently per dimension). With it every reverse step is affine in x_t plus Gaussian noise,
so the exact mean and std of the final samples follow from a scalar recursion (``_chain_moments``,
written from the papers' equations, independently of the library's coefficients). Finite step
counts have a real discretization error (e.g. DDIM with 10 steps keeps only ~0.8 sigma), so the
Monte-Carlo samples are compared with these exact moments at a tolerance of 5 standard errors
of the sample count, and separately the exact moments are shown to converge to (mu, sigma).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from helpers import COSINE_100, MU, SIGMA, gaussian_denoiser
from hypothesis import given, settings
from hypothesis import strategies as st

from rlox_dp.diffusion import (
    SAMPLERS,
    DDIMSampler,
    DDPMSampler,
    NoiseSchedule,
    Sampler,
    make_sampler,
    make_schedule,
)

FAST = settings(max_examples=30, deadline=None)



N_SAMPLES = 20_000


def quiet_schedule(name: str, T: int) -> NoiseSchedule:
    """``make_schedule(name, T)`` without the prior-mismatch warning of very short schedules."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_schedule(name, T)


def ddpm_posterior(sched: NoiseSchedule, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """DDPM eq. 7, ``q(x_{t-1} | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, var)`` of a schedule at
    ``(B,)`` timesteps: ``(coef_x0, coef_xt, var)``, float64 ``(B,)`` each (1, 0, 0 at t = 0)."""
    b, ab, ab_prev = sched.betas[t], sched.alphas_cumprod[t], sched.alphas_cumprod_prev[t]
    return ab_prev.sqrt() * b / (1 - ab), (1 - b).sqrt() * (1 - ab_prev) / (1 - ab), b * (1 - ab_prev) / (1 - ab)





def _chain_moments(
    ab: np.ndarray, pairs: list[tuple[int, int]], kind: str, eta: float, mu: float, sigma: float
):
    """Exact (mean, std) of the samples of a reverse chain with the optimal Gaussian denoiser.

    kind "ddpm": Ho et al. eq. 11 with respaced betas, x_prev = (x_t - b/sqrt(1-ab_t) eps)/sqrt(a)
    + sqrt(b (1-ab_prev)/(1-ab_t)) z; "ddim": Song et al. eq. 12; "naive": eq. 11 with the
    single-step beta_t of the training schedule, ignoring the stride.
    """
    m, v = 0.0, 1.0
    for t, t_prev in pairs:
        abt = ab[t]
        abp = ab[t_prev] if t_prev >= 0 else 1.0
        # eps_hat = e * (x - sqrt(abt) mu), x0_hat = mu + k * (x - sqrt(abt) mu)
        denom = abt * sigma**2 + 1 - abt
        e, k = math.sqrt(1 - abt) / denom, math.sqrt(abt) * sigma**2 / denom
        c = math.sqrt(abt) * mu  # x - c is the residual
        if kind in ("ddpm", "naive"):
            if kind == "ddpm":
                alpha = abt / abp
            else:
                alpha = ab[t] / ab[t - 1] if t > 0 else ab[0]
                abp = ab[t - 1] if t > 0 else 1.0
            beta = 1 - alpha
            g = beta / math.sqrt(1 - abt)
            A, B = (1 - g * e) / math.sqrt(alpha), g * e * c / math.sqrt(alpha)
            var = beta * (1 - abp) / (1 - abt)
        else:
            var = eta**2 * (1 - abp) / (1 - abt) * (1 - abt / abp)
            d = math.sqrt(max(1 - abp - var, 0.0))
            A = math.sqrt(abp) * k + d * e
            B = math.sqrt(abp) * (mu - k * c) - d * e * c
        m, v = A * m + B, A * A * v + var
    return m, math.sqrt(v)


def _expected(
    sampler: Sampler, n: int, kind: str, eta: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    ab = sampler.schedule.alphas_cumprod.numpy()
    moments = [
        _chain_moments(ab, list(sampler.plan(n).pairs), kind, eta, mu, s)
        for mu, s in zip(MU.tolist(), SIGMA.tolist(), strict=True)
    ]
    return np.array([m for m, _ in moments]), np.array([s for _, s in moments])


def _assert_moments(samples: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> None:
    """Sample mean / std within 5 standard errors (std/sqrt(N), std/sqrt(2N)) of the exact values."""
    n = samples.shape[0]
    got_mean, got_std = samples.double().mean(0).numpy(), samples.double().std(0).numpy()
    assert np.all(np.abs(got_mean - mean) < 5 * std / math.sqrt(n)), (got_mean, mean)
    assert np.all(np.abs(got_std - std) < 5 * std / math.sqrt(2 * n)), (got_std, std)


CASES = [  # (sampler factory, num_inference_steps, kind, eta)
    (lambda s, p: DDPMSampler(s, p, clip_sample=False), 100, "ddpm", 0.0),
    (lambda s, p: DDPMSampler(s, p, clip_sample=False), 10, "ddpm", 0.0),
    (lambda s, p: DDIMSampler(s, p, clip_sample=False, eta=0.0), 10, "ddim", 0.0),
    (lambda s, p: DDIMSampler(s, p, clip_sample=False, eta=1.0), 10, "ddim", 1.0),
    (lambda s, p: DDIMSampler(s, p, clip_sample=False, eta=0.0), 100, "ddim", 0.0),
]


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize(
    ("factory", "n", "kind", "eta"),
    CASES,
    ids=["ddpm100", "ddpm10", "ddim0-10", "ddim1-10", "ddim0-100"],
)
def test_samples_match_exact_chain_moments(
    factory, n: int, kind: str, eta: float, prediction_type: str
) -> None:
    sampler = factory(COSINE_100, prediction_type)
    denoise = gaussian_denoiser(COSINE_100, prediction_type, MU, SIGMA)
    g = torch.Generator().manual_seed(0)
    x = sampler.sample(denoise, (N_SAMPLES, 2), n, generator=g)
    assert x.dtype == torch.float32 and x.shape == (N_SAMPLES, 2)
    mean, std = _expected(sampler, n, kind, eta)
    _assert_moments(x, mean, std)
    # The mean is unbiased for the cosine schedule at any step count.
    assert np.allclose(mean, MU.numpy(), atol=1e-3 * SIGMA.numpy())


def test_naive_strided_ddpm_fails_the_std_check() -> None:
    """Reusing the single-step beta_t on a 10-of-100 stride is far off: the check is sensitive."""
    sampler = DDPMSampler(COSINE_100, "epsilon", clip_sample=False)
    denoise = gaussian_denoiser(COSINE_100, "epsilon", MU, SIGMA)
    ab = COSINE_100.alphas_cumprod
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_SAMPLES, 2, generator=g)
    for t, _ in sampler.plan(10).pairs:
        eps = denoise(x, torch.full((N_SAMPLES,), t))
        abt, abp = ab[t].item(), (ab[t - 1].item() if t > 0 else 1.0)
        alpha = abt / abp
        x = (x - (1 - alpha) / math.sqrt(1 - abt) * eps) / math.sqrt(alpha)
        x = x + math.sqrt((1 - alpha) * (1 - abp) / (1 - abt)) * torch.randn(x.shape, generator=g)
    _assert_moments(x, *_expected(sampler, 10, "naive"))  # the reference recursion models it
    mean, std = _expected(sampler, 10, "ddpm")
    with pytest.raises(AssertionError):
        _assert_moments(x, mean, std)
    # Not marginally: the std is off by > 20 standard errors from the correct chain and from sigma.
    got_std = x.double().std(0).numpy()
    assert np.all(np.abs(got_std - std) > 20 * std / math.sqrt(2 * N_SAMPLES)), (got_std, std)
    assert np.all(np.abs(got_std - SIGMA.numpy()) > 0.2 * SIGMA.numpy()), (got_std, SIGMA)


@pytest.mark.parametrize("kind", ["ddpm", "ddim0", "ddim1"])
def test_exact_chain_converges_to_data(kind: str) -> None:
    """Library coefficients, exact Gaussian denoiser: the error shrinks with the step count."""
    sched = make_schedule("cosine", 1000)
    sampler = DDPMSampler(sched) if kind == "ddpm" else DDIMSampler(sched, eta=float(kind[-1]))
    ab = sched.alphas_cumprod.numpy()
    errors = []
    for n in (10, 100, 1000):
        pairs = sampler.plan(n).pairs
        coefs = sampler.coefficients(pairs)
        for mu, sigma in zip(MU.tolist(), SIGMA.tolist(), strict=True):
            m, v = 0.0, 1.0
            for (t, _), c in zip(pairs, coefs, strict=True):
                denom = ab[t] * sigma**2 + 1 - ab[t]
                k = math.sqrt(ab[t]) * sigma**2 / denom
                A = c.coef_x0 * k + c.coef_xt
                m, v = A * m + c.coef_x0 * mu * (1 - k * math.sqrt(ab[t])), A * A * v + c.std**2
            errors.append((n, abs(m - mu) / sigma, abs(math.sqrt(v) / sigma - 1)))
    by_n = {n: max(e[2] for e in errors if e[0] == n) for n in (10, 100, 1000)}
    assert by_n[1000] < by_n[100] < by_n[10]
    assert by_n[1000] < 0.01 and max(e[1] for e in errors) < 1e-3


def test_full_ddpm_matches_data_distribution() -> None:
    """All T = 1000 steps: samples match (mu, sigma) within 5 SE plus the 1% discretization bound."""
    sched = make_schedule("cosine", 1000)
    sampler = DDPMSampler(sched, "epsilon", clip_sample=False)
    n = 5000
    x = sampler.sample(
        gaussian_denoiser(sched, "epsilon", MU, SIGMA),
        (n, 2),
        1000,
        generator=torch.Generator().manual_seed(1),
    )
    s = SIGMA.numpy()
    assert np.all(np.abs(x.double().mean(0).numpy() - MU.numpy()) < 5 * s / math.sqrt(n) + 1e-3 * s)
    assert np.all(np.abs(x.double().std(0).numpy() - s) < 5 * s / math.sqrt(2 * n) + 0.01 * s)


@FAST
@given(st.sampled_from(["cosine", "linear"]), st.integers(1, 1000), st.data())
def test_respaced_ddpm_is_ddpm_on_the_respaced_schedule(
    name: str, T: int, data: st.DataObject
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make_schedule(name, T)
        n = data.draw(st.integers(1, T))
        sampler = DDPMSampler(sched)
        ts = sampler.timesteps(n).flip(0)  # ascending
        ab = sched.alphas_cumprod[ts]
        respaced = NoiseSchedule(1 - ab / torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]]))
    assert torch.allclose(respaced.alphas_cumprod, ab, rtol=1e-10)
    coefs = sampler.plan(n).steps
    i = torch.arange(n - 1, -1, -1)  # respaced index of each pair
    coef_x0, coef_xt, var = ddpm_posterior(respaced, i)
    assert np.allclose([c.coef_x0 for c in coefs], coef_x0, rtol=1e-8, atol=1e-12)
    assert np.allclose([c.coef_xt for c in coefs], coef_xt, rtol=1e-8, atol=1e-12)
    assert np.allclose([c.std**2 for c in coefs], var, rtol=1e-8, atol=1e-15)


@FAST
@given(st.sampled_from(["cosine", "linear"]), st.integers(2, 1000), st.data())
def test_ddpm_posterior_is_gaussian_conditioning(name: str, T: int, data: st.DataObject) -> None:
    """The reference above: q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0)."""
    sched = quiet_schedule(name, T)
    t = torch.tensor(data.draw(st.lists(st.integers(1, T - 1), min_size=1, max_size=8)))
    coef_x0, coef_xt, var = ddpm_posterior(sched, t)
    a, b, ab_prev = 1 - sched.betas[t], sched.betas[t], sched.alphas_cumprod[t - 1]
    precision = a / b + 1 / (1 - ab_prev)
    assert torch.allclose(var, 1 / precision, rtol=1e-9, atol=0)
    assert torch.allclose(coef_xt, a.sqrt() / b / precision, rtol=1e-9, atol=0)
    assert torch.allclose(coef_x0, ab_prev.sqrt() / (1 - ab_prev) / precision, rtol=1e-9, atol=1e-300)
    at_zero = [float(c[0]) for c in ddpm_posterior(sched, torch.tensor([0]))]
    assert at_zero == pytest.approx([1.0, 0.0, 0.0], abs=1e-9)  # x_{-1} is x_0 itself


@FAST
@given(st.sampled_from(["cosine", "linear"]), st.integers(1, 1000), st.data())
def test_ddim_eta_one_has_ddpm_coefficients(name: str, T: int, data: st.DataObject) -> None:
    sched = quiet_schedule(name, T)
    pairs = DDPMSampler(sched).plan(data.draw(st.integers(1, T))).pairs
    ddpm, ddim = (
        DDPMSampler(sched).coefficients(pairs),
        DDIMSampler(sched, eta=1.0).coefficients(pairs),
    )
    assert np.allclose(np.array(ddpm), np.array(ddim), rtol=1e-8, atol=1e-10)
    assert all(c.std == 0 for c in DDIMSampler(sched, eta=0.0).coefficients(pairs))


@FAST
@given(st.integers(1, 1000), st.data())
def test_timesteps_trailing_spacing(T: int, data: st.DataObject) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = DDIMSampler(make_schedule("linear", T))
    n = data.draw(st.integers(1, T))
    ts = sampler.timesteps(n)
    assert ts.dtype == torch.int64 and ts.shape == (n,)
    assert ts[0] == T - 1 and ts[-1] >= 0
    assert bool((ts[1:] < ts[:-1]).all())  # strictly descending, hence unique
    expected = [math.floor((n - i) * T / n + 0.5) - 1 for i in range(n)]
    assert ts.tolist() == expected
    pairs = sampler.plan(n).pairs
    assert [p[0] for p in pairs] == ts.tolist() and pairs[-1][1] == -1
    assert all(p[1] == q[0] for p, q in itertools.pairwise(pairs))


def test_ddim_eta0_is_deterministic_and_leaves_the_generator_alone() -> None:
    sampler = DDIMSampler(COSINE_100, eta=0.0)
    denoise = gaussian_denoiser(COSINE_100, "epsilon", MU, SIGMA)
    init = torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    init_copy = init.clone()
    g = torch.Generator().manual_seed(7)
    state = g.get_state()
    a = sampler.sample(denoise, (64, 2), 10, init_noise=init)
    b = sampler.sample(denoise, (64, 2), 10, generator=g, init_noise=init)
    assert torch.equal(a, b) and torch.equal(g.get_state(), state) and torch.equal(init, init_copy)


@pytest.mark.parametrize("sampler", [DDPMSampler(COSINE_100), DDIMSampler(COSINE_100, eta=0.5)])
def test_seeded_generator_reproduces(sampler: Sampler) -> None:
    denoise = gaussian_denoiser(COSINE_100, "epsilon", MU, SIGMA)

    def run(seed: int) -> torch.Tensor:
        return sampler.sample(denoise, (32, 2), 10, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))
    # Same initial noise, different step noise: stochastic samplers still differ.
    init = torch.randn(32, 2)
    a = sampler.sample(
        denoise, (32, 2), 10, generator=torch.Generator().manual_seed(0), init_noise=init
    )
    b = sampler.sample(
        denoise, (32, 2), 10, generator=torch.Generator().manual_seed(1), init_noise=init
    )
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("cls", [DDPMSampler, DDIMSampler])
def test_apply_step_loop_equals_sample(cls: type[Sampler]) -> None:
    sampler = cls(COSINE_100, "sample", clip_sample=True, clip_sample_range=0.8)
    denoise = gaussian_denoiser(COSINE_100, "sample", MU, SIGMA)
    init = torch.randn(16, 2)
    expected = sampler.sample(
        denoise, (16, 2), 7, generator=torch.Generator().manual_seed(5), init_noise=init
    )
    g, x, plan = torch.Generator().manual_seed(5), init, sampler.plan(7)
    for (t, _), c in zip(plan.pairs, plan.steps, strict=True):
        z = torch.randn(x.shape, generator=g) if c.std > 0 else None
        out = sampler.apply_step(denoise(x, torch.full((16,), t)), x, c, z)
        x = out.prev_sample
    assert torch.equal(x, expected) and torch.equal(out.pred_x0, x)  # final step returns pred_x0


@pytest.mark.parametrize("sampler", [DDPMSampler(COSINE_100), DDIMSampler(COSINE_100, eta=0.0)])
def test_sample_is_draw_noise_then_run(sampler: Sampler) -> None:
    """All noise is drawn before the loop: a denoiser using the same RNG does not shift it."""
    denoise = gaussian_denoiser(COSINE_100, "epsilon", MU, SIGMA)
    x, noises = sampler.draw_noise((8, 2), 6, generator=torch.Generator().manual_seed(2))
    stochastic = isinstance(sampler, DDPMSampler)
    assert [z is not None for z in noises] == [stochastic] * 5 + [False]  # last step: no noise
    expected = sampler.run(denoise, x, sampler.plan(6), noises)
    torch.manual_seed(0)
    got = sampler.sample(denoise, (8, 2), 6, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)

    def noisy_denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        torch.randn(3)  # draws from the global RNG between the sampler's draws
        return denoise(x_t, t)

    torch.manual_seed(1)
    a = sampler.sample(denoise, (8, 2), 6)
    torch.manual_seed(1)
    b = sampler.sample(noisy_denoise, (8, 2), 6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_plan_is_cached_and_follows_eta() -> None:
    """plan(n): the timesteps' pairs and their coefficients, immutable, computed once per n, and
    recomputed for a changed eta."""
    sampler = DDIMSampler(COSINE_100, eta=0.0)
    plan = sampler.plan(6)
    ts = sampler.timesteps(6).tolist()
    assert plan.timesteps == tuple(ts) and plan.pairs == tuple(zip(ts, ts[1:] + [-1], strict=True))
    assert list(plan.steps) == sampler.coefficients(plan.pairs) and len(plan) == 6
    table = plan.coefficients
    assert table.shape == (6, 5) and table.dtype == torch.float64
    assert table[:, 3].tolist() == [c.coef_xt for c in plan.steps]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.pairs = ()  # type: ignore[misc]
    assert sampler.plan(6) is plan and len(sampler._plans) == 1
    sampler.eta = 1.0
    np.testing.assert_allclose(sampler.plan(6).coefficients, DDPMSampler(COSINE_100).plan(6).coefficients,
                               atol=1e-12)
    assert sampler.plan(6) != plan and len(sampler._plans) == 2


@FAST
@given(
    st.floats(0.1, 3.0),
    st.floats(1.0, 1e4),
    st.sampled_from(["epsilon", "sample"]),
    st.integers(0, 99),
)
def test_clip_sample_bounds_pred_x0(
    bound: float, scale: float, prediction_type: str, t: int
) -> None:
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(t))
    out = scale * torch.randn(8, 3, generator=torch.Generator().manual_seed(t + 1))
    for sampler in (
        DDPMSampler(COSINE_100, prediction_type, True, bound),
        DDIMSampler(COSINE_100, prediction_type, True, bound),
    ):
        step = sampler.apply_step(out, x, sampler.coefficients([(t, t - 1)])[0], None)
        assert float(step.pred_x0.abs().max()) <= bound + 1e-6
    final = DDIMSampler(COSINE_100, prediction_type, True, bound).sample(
        lambda x, t: scale * torch.ones_like(x), (4, 3), 5
    )
    assert float(final.abs().max()) <= bound + 1e-6


@pytest.mark.parametrize("cls", [DDPMSampler, DDIMSampler])
def test_prediction_types_agree_without_clipping(cls: type[Sampler]) -> None:
    """Predicting eps or the x0 it implies gives the same step."""
    x0, x_t = torch.randn(8, 2, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
    t = torch.full((8,), 40)
    eps = COSINE_100.predict_eps(x_t, x0, t)
    z = torch.randn(8, 2, dtype=torch.float64)
    eps_sampler, x0_sampler = (cls(COSINE_100, p, clip_sample=False) for p in ("epsilon", "sample"))
    a = eps_sampler.apply_step(eps, x_t, eps_sampler.coefficients([(40, 30)])[0], z)
    b = x0_sampler.apply_step(x0, x_t, x0_sampler.coefficients([(40, 30)])[0], z)
    assert torch.allclose(a.pred_x0, x0, atol=1e-10) and torch.allclose(
        a.prev_sample, b.prev_sample, atol=1e-10
    )


def test_make_sampler_and_validation() -> None:
    assert isinstance(make_sampler("DDPM", COSINE_100), DDPMSampler)
    ddim = make_sampler("DDIM", COSINE_100, eta=0.3, prediction_type="sample")
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 0.3 and ddim.prediction_type == "sample"
    with pytest.raises(ValueError) as info:
        make_sampler("euler", COSINE_100)
    assert all(name in str(info.value) for name in SAMPLERS)
    for kwargs, needle in [
        ({"prediction_type": "v_prediction"}, "prediction_type"),
        ({"clip_sample_range": 0.0}, "clip_sample_range"),
        ({"eta": 1.5}, "eta"),
    ]:
        with pytest.raises(ValueError, match=needle):
            DDIMSampler(COSINE_100, **kwargs)
    with pytest.raises(TypeError, match="schedule"):
        DDPMSampler("squaredcos_cap_v2")  # type: ignore[arg-type]
    sampler = DDPMSampler(COSINE_100)
    for bad in (0, 101):
        with pytest.raises(ValueError, match="num_inference_steps"):
            sampler.timesteps(bad)
    with pytest.raises(TypeError, match="num_inference_steps"):
        sampler.timesteps(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="t must"):
        sampler.coefficients([(100, 50)])
    with pytest.raises(ValueError, match="t_prev"):
        sampler.coefficients([(50, 50)])
    with pytest.raises(ValueError, match="init_noise"):
        sampler.sample(lambda x, t: x, (2, 3), 5, init_noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="model_output"):
        sampler.sample(lambda x, t: x[:, :1], (2, 3), 5)
