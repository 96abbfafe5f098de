"""Tests of DPM-Solver++ 2M (rlox_dp.diffusion.dpm_solver) with the exact Gaussian denoiser.

For data ``x0 ~ N(mu, sigma^2)`` (per dimension) the optimal denoiser is affine in ``x_t``, so the
sampler's output is an affine function ``a z + b`` of the starting noise ``z``. ``_paper_chain``
computes ``(a, b)`` from the DPM-Solver++ paper's equations (written in ``lambda``, ``h``, ``r0``,
``D0``, ``D1``, independently of the library's coefficient tables), and the exact solution of the
probability-flow ODE maps ``x_t`` to ``sqrt(ab_s) mu + s_s / s_t (x_t - sqrt(ab_t) mu)`` with
``s_t = sqrt(ab_t sigma^2 + 1 - ab_t)`` (the flow of a Gaussian keeps the standardized coordinate).
"""

from __future__ import annotations

import itertools
import math
import shutil
import warnings

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
    build,
    gaussian_denoiser,
    policy_config,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from rlox_dp.algorithms import get_algorithm_class
from rlox_dp.diffusion import (
    SAMPLERS,
    DDIMSampler,
    DPMSolverMultistepSampler,
    make_sampler,
    make_schedule,
)

FAST = settings(max_examples=25, deadline=None)
COSINE_1000 = make_schedule("cosine", 1000)


def _paper_chain(ab: np.ndarray, ts: list[int], mu: float, sigma: float) -> tuple[float, float]:
    """``(a, b)`` of DPM-Solver++ 2M (paper, Algorithm 2; first step and final step first order)
    from ``x_{ts[0]} = z`` to the clean sample, with the exact denoiser of ``N(mu, sigma^2)``."""
    def lam(t: int) -> float:
        return math.inf if t < 0 else 0.5 * math.log(ab[t] / (1 - ab[t]))

    def alpha_sigma(t: int) -> tuple[float, float]:
        return (1.0, 0.0) if t < 0 else (math.sqrt(ab[t]), math.sqrt(1 - ab[t]))

    x = (1.0, 0.0)  # x = a z + b
    prev_m = None
    steps = [*ts, -1]
    for i, (t, s) in enumerate(itertools.pairwise(steps)):
        a_t, s_t = alpha_sigma(t)
        k = a_t * sigma**2 / (a_t**2 * sigma**2 + s_t**2)  # E[x0 | x_t] = mu + k (x_t - a_t mu)
        m = (k * x[0], mu + k * (x[1] - a_t * mu))
        a_s, s_s = alpha_sigma(s)
        h = lam(s) - lam(t)
        phi = a_s * (1.0 if math.isinf(h) else -math.expm1(-h))  # alpha_s (1 - e^{-h})
        ratio = s_s / s_t
        new = [ratio * x[j] + phi * m[j] for j in range(2)]
        if i > 0 and s >= 0:  # 2M: D1 = (m0 - m1) / r0, x += alpha_s (1 - e^{-h}) D1 / 2
            r0 = (lam(t) - lam(steps[i - 1])) / h
            new = [new[j] + 0.5 * phi * (m[j] - prev_m[j]) / r0 for j in range(2)]
        x, prev_m = (new[0], new[1]), m
    return x


def _affine(sampler, n: int, mu: float = 0.5, sigma: float = 0.3) -> tuple[float, float]:
    """``(a, b)`` of the library sampler's map from the starting noise to the sample (float64)."""
    denoise = gaussian_denoiser(sampler.schedule, sampler.prediction_type,
                                torch.tensor([mu], dtype=torch.float64),
                                torch.tensor([sigma], dtype=torch.float64))
    z = torch.tensor([[0.0], [1.0]], dtype=torch.float64)
    out = sampler.sample(denoise, (2, 1), n, init_noise=z)
    return out[1, 0].item() - out[0, 0].item(), out[0, 0].item()


def _ode_then_jump(sampler, n: int, mu: float = 0.5, sigma: float = 0.3) -> tuple[float, float]:
    """``(a, b)`` of the exact PF-ODE from ``T - 1`` to the last timestep ``t_l`` of ``n`` steps,
    followed by the same final jump ``E[x0 | x_{t_l}]`` every sampler ends with."""
    ab = sampler.schedule.alphas_cumprod.numpy()
    first, last = sampler.num_train_timesteps - 1, sampler.plan(n).pairs[-1][0]

    def spread(t: int) -> float:
        return math.sqrt(ab[t] * sigma**2 + 1 - ab[t])

    a = spread(last) / spread(first)
    b = math.sqrt(ab[last]) * mu - a * math.sqrt(ab[first]) * mu
    k = math.sqrt(ab[last]) * sigma**2 / spread(last) ** 2
    return k * a, mu + k * (b - math.sqrt(ab[last]) * mu)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 10, 100])
def test_matches_the_papers_recursion(n: int, prediction_type: str) -> None:
    """Exact affine map (no Monte Carlo: the solver is deterministic) for both parametrizations."""
    sampler = DPMSolverMultistepSampler(COSINE_100, prediction_type, clip_sample=False)
    ab = COSINE_100.alphas_cumprod.numpy()
    for mu, sigma in zip(MU.tolist(), SIGMA.tolist(), strict=True):
        got = _affine(sampler, n, mu, sigma)
        expected = _paper_chain(ab, sampler.timesteps(n).tolist(), mu, sigma)
        np.testing.assert_allclose(got, expected, rtol=1e-7, atol=1e-9)


def test_samples_have_the_chains_moments() -> None:
    """float32 Monte Carlo through ``sample`` with a generator: mean and std of ``a z + b``."""
    sampler = DPMSolverMultistepSampler(COSINE_100, "epsilon", clip_sample=False)
    x = sampler.sample(gaussian_denoiser(COSINE_100, "epsilon", MU, SIGMA), (20_000, 2), 5,
                       generator=torch.Generator().manual_seed(0))
    ab = COSINE_100.alphas_cumprod.numpy()
    for d, (mu, sigma) in enumerate(zip(MU.tolist(), SIGMA.tolist(), strict=True)):
        a, b = _paper_chain(ab, sampler.timesteps(5).tolist(), mu, sigma)
        se = abs(a) / math.sqrt(x.shape[0])
        assert abs(x[:, d].double().mean().item() - b) < 5 * se
        assert abs(x[:, d].double().std().item() - abs(a)) < 5 * se


def test_converges_to_the_probability_flow_ode_faster_than_ddim() -> None:
    """Relative error of the slope ``a`` against the exact ODE: DPM-Solver++ shrinks it ~3x per
    doubling of the steps (2nd order, slowed by the first step's large ``h``), DDIM ~2x."""
    dpm = DPMSolverMultistepSampler(COSINE_1000, "sample", clip_sample=False)
    ddim = DDIMSampler(COSINE_1000, "sample", clip_sample=False)
    ns = [125, 250, 500, 1000]
    errors = {}
    for name, sampler in (("dpm", dpm), ("ddim", ddim)):
        errors[name] = []
        for n in ns:
            (a, b), (ra, rb) = _affine(sampler, n), _ode_then_jump(sampler, n)
            errors[name].append(abs(a - ra) / ra)
            assert abs(b - rb) < 1e-5  # the mean is right at every step count
    dpm_rates = [e0 / e1 for e0, e1 in itertools.pairwise(errors["dpm"])]
    ddim_rates = [e0 / e1 for e0, e1 in itertools.pairwise(errors["ddim"])]
    assert all(r > 2.5 for r in dpm_rates), errors
    assert all(1.7 < r < 2.3 for r in ddim_rates), errors
    assert all(e1 < e2 / 5 for e1, e2 in zip(errors["dpm"], errors["ddim"], strict=True)), errors
    assert errors["dpm"][-1] < 2e-4
    # Few steps: already 2x closer to the ODE than DDIM at 5 and 10 steps.
    for n in (5, 10):
        err = {k: abs(_affine(s, n)[0] / _ode_then_jump(s, n)[0] - 1) for k, s in (("dpm", dpm), ("ddim", ddim))}
        assert err["dpm"] < err["ddim"] / 2, (n, err)


@FAST
@given(st.sampled_from(["cosine", "linear", "squaredcos_cap_v2"]), st.integers(2, 300), st.data())
def test_first_order_is_ddim_and_corrections_only_inside(name: str, T: int, data: st.DataObject) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make_schedule(name, T)
    n = data.draw(st.integers(1, T))
    plan = DPMSolverMultistepSampler(sched, solver_order=2).plan(n)
    pairs, coefs = plan.pairs, plan.steps
    ddim = DDIMSampler(sched, eta=0.0).coefficients(pairs)
    first = DPMSolverMultistepSampler(sched, solver_order=1).coefficients(pairs)
    np.testing.assert_allclose(np.array(first)[:, :5], np.array(ddim), rtol=1e-9, atol=1e-12)
    assert all(c.coef_correction == 0.0 for c in first)
    np.testing.assert_allclose(np.array(coefs)[:, :5], np.array(ddim), rtol=1e-9, atol=1e-12)
    corrections = [c.coef_correction for c in coefs]
    assert corrections[0] == 0.0 and corrections[-1] == 0.0  # first step, final step: 1st order
    assert all(math.isfinite(c) and c >= 0 for c in corrections)
    assert all(c > 0 for c in corrections[1:-1])  # every inner step is 2nd order


@FAST
@given(st.integers(1, 12), st.sampled_from(["epsilon", "sample"]), st.integers(0, 2**16))
def test_multistep_loop_equals_sample(n: int, prediction_type: str, seed: int) -> None:
    """apply_multistep step by step with the previous x0 estimate is the sampler's loop."""
    sampler = DPMSolverMultistepSampler(COSINE_100, prediction_type, clip_sample=True,
                                        clip_sample_range=1.2)
    denoise = gaussian_denoiser(COSINE_100, prediction_type, MU, SIGMA)
    init = torch.randn(16, 2, generator=torch.Generator().manual_seed(seed))
    expected = sampler.sample(denoise, (16, 2), n, init_noise=init)
    x, prev_pred_x0, plan = init, None, sampler.plan(n)
    for (t, _), c in zip(plan.pairs, plan.steps, strict=True):
        out = sampler.apply_multistep(denoise(x, torch.full((16,), t)), x, c, prev_pred_x0)
        x, prev_pred_x0 = out
        assert float(out.pred_x0.abs().max()) <= 1.2 + 1e-6
    torch.testing.assert_close(x, expected, rtol=1e-6, atol=1e-6)
    if n <= 2:  # first and final steps are first order: 1 and 2 steps are exactly DDIM
        ddim = DDIMSampler(COSINE_100, prediction_type, True, 1.2).sample(denoise, (16, 2), n,
                                                                        init_noise=init)
        torch.testing.assert_close(expected, ddim, rtol=1e-6, atol=1e-6)


def test_prediction_types_agree_and_the_generator_is_untouched() -> None:
    init = torch.randn(64, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    a, b = (DPMSolverMultistepSampler(COSINE_100, p, clip_sample=False).sample(
        gaussian_denoiser(COSINE_100, p, MU, SIGMA), (64, 2), 7, generator=g, init_noise=init)
        for p in ("epsilon", "sample"))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert torch.equal(g.get_state(), state)  # deterministic: nothing drawn


def test_factory_validation_and_policy_integration() -> None:
    assert "dpmsolver++" in SAMPLERS
    sampler = make_sampler("DPMSolver++", COSINE_100, prediction_type="sample", solver_order=1)
    assert isinstance(sampler, DPMSolverMultistepSampler) and sampler.solver_order == 1
    with pytest.raises(ValueError, match="solver_order"):
        DPMSolverMultistepSampler(COSINE_100, solver_order=3)
    with pytest.raises(ValueError, match="previous step's pred_x0"):
        sampler = DPMSolverMultistepSampler(COSINE_100)
        sampler.apply_multistep(torch.zeros(2, 2), torch.zeros(2, 2), sampler.plan(5).steps[2], None)
    policy, _ = build("diffusion", num_train_timesteps=20, noise_scheduler_type="dpmsolver++",
                      num_inference_steps=4)
    assert policy.config.noise_scheduler_type == "DPMSolver++"
    assert isinstance(policy.sampler, DPMSolverMultistepSampler)
    policy.eval()
    obs = {"state": torch.randn(3, 2, 3)}
    chunk = policy.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    assert torch.equal(chunk, policy.predict_action_chunk(obs, torch.Generator().manual_seed(0)))
    policy.configure_inference("DDIM", 2)
    ddim = policy.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    policy.configure_inference("dpmsolver++", 2)  # two steps: identical to DDIM
    torch.testing.assert_close(policy.predict_action_chunk(obs, torch.Generator().manual_seed(0)),
                               ddim)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler")
@pytest.mark.parametrize(("algorithm", "sampler", "steps"), [
    ("diffusion", "DPMSolver++", 4), ("flow", "Heun", 3), ("consistency", "Consistency", 3)])
def test_compiled_denoising_loop_matches_eager(algorithm: str, sampler: str, steps: int) -> None:
    """The new samplers inside Diffusion Policy's compiled whole-loop path give the eager chunks."""
    normalizer = build("diffusion")[1].normalizer
    cls = get_algorithm_class(algorithm)
    config = policy_config(algorithm, {**TINY["diffusion"], "num_train_timesteps": 20})
    eager = cls(config, OBS_SPACE, ACT_SPACE, normalizer)
    compiled = cls(config, OBS_SPACE, ACT_SPACE, normalizer)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_networks(dynamic=False)
    obs = {"state": torch.randn(2, 2, 3)}
    for policy in (eager, compiled):
        policy.eval()
        policy.configure_inference(sampler, steps)
    with torch.no_grad():
        a = eager.predict_action_chunk(obs, torch.Generator().manual_seed(3))
        b = compiled.predict_action_chunk(obs, torch.Generator().manual_seed(3))
    assert steps in {len(plan) for plan in compiled.acceleration._loops}
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
