"""Property tests of the noise schedules (rlox_dp.diffusion.schedules)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlox_dp.diffusion import (
    PRIOR_MISMATCH_THRESHOLD,
    SCHEDULES,
    NoiseSchedule,
    PriorMismatchWarning,
    make_schedule,
)

pytestmark = pytest.mark.filterwarnings("ignore::rlox_dp.diffusion.PriorMismatchWarning")
FAST = settings(max_examples=40, deadline=None)


@st.composite
def schedules(draw: st.DrawFn, min_T: int = 2) -> NoiseSchedule:
    name = draw(st.sampled_from(SCHEDULES))
    T = draw(st.integers(min_T, 1000))
    if name != "linear":
        return make_schedule(name, T)
    beta_start = draw(st.floats(1e-5, 0.05))
    beta_end = draw(st.floats(beta_start, 0.5))
    return make_schedule(name, T, beta_start, beta_end)


@st.composite
def schedule_and_batch(draw: st.DrawFn) -> tuple[NoiseSchedule, torch.Tensor, tuple[int, ...], int]:
    """A schedule, (B,) timesteps, a (B, ...) shape and a torch seed."""
    sched = draw(schedules())
    B = draw(st.integers(1, 8))
    t = torch.tensor(
        draw(st.lists(st.integers(0, sched.num_train_timesteps - 1), min_size=B, max_size=B))
    )
    trailing = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    return sched, t, (B, *trailing), draw(st.integers(0, 2**31 - 1))


@FAST
@given(schedules(min_T=1))
def test_tables_are_valid(sched: NoiseSchedule) -> None:
    b, ab, snr = sched.betas, sched.alphas_cumprod, sched.snr
    assert b.dtype == torch.float64 and b.shape == (sched.num_train_timesteps,)
    assert bool(((b > 0) & (b < 1)).all())
    assert torch.allclose(sched.alphas, 1 - b, rtol=0, atol=0)
    assert bool(((ab > 0) & (ab <= 1)).all())
    assert bool((ab[1:] < ab[:-1]).all()), "alphas_cumprod must be strictly decreasing"
    assert bool((snr[1:] < snr[:-1]).all()), "SNR must be strictly decreasing"
    assert torch.allclose(snr, ab / (1 - ab), rtol=1e-9, atol=0)  # library uses expm1: more exact
    assert sched.alphas_cumprod_prev[0] == 1.0
    assert torch.equal(sched.alphas_cumprod_prev[1:], ab[:-1])


@FAST
@given(schedule_and_batch())
def test_predict_x0_and_eps_invert_add_noise(args: tuple) -> None:
    sched, t, shape, seed = args
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=g, dtype=torch.float64)
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    x_t = sched.add_noise(x0, eps, t)
    ab = sched.alphas_cumprod[t].reshape((-1,) + (1,) * (len(shape) - 1))
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-12, atol=1e-12)
    # Inverting divides by sqrt(ab) (resp. sqrt(1 - ab)): scale the tolerance accordingly.
    assert torch.allclose(
        sched.predict_x0(x_t, eps, t), x0, rtol=0, atol=1e-12 / ab.sqrt().min().item()
    )
    assert torch.allclose(
        sched.predict_eps(x_t, x0, t), eps, rtol=0, atol=1e-12 / (1 - ab).sqrt().min().item()
    )


def test_helpers_keep_float32() -> None:
    sched = make_schedule("squaredcos_cap_v2", 100)
    x0, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 10, 50, 99])
    x_t = sched.add_noise(x0, eps, t)
    assert x_t.dtype == torch.float32
    for out in (
        sched.predict_x0(x_t, eps, t),
        sched.predict_eps(x_t, x0, t),
    ):
        assert out.dtype == torch.float32 and out.shape == (4, 3)
    # float32 round trip: error ~ float32 eps * |x_t| / sqrt(ab_t) with ab_99 ~ 2.4e-7
    assert torch.allclose(sched.predict_eps(x_t, x0, t), eps, atol=1e-4)
    assert torch.allclose(sched.predict_x0(x_t, eps, t)[:3], x0[:3], atol=1e-5)


@pytest.mark.parametrize("T", [1, 2, 10, 100, 1000])
def test_cosine_matches_closed_form(T: int) -> None:
    sched = make_schedule("cosine", T)

    def f(t: float) -> float:
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    expected = np.array([f(i + 1) / f(0) for i in range(T)])
    # Only the last beta (where f(T) ~ 0) reaches the 0.999 cap.
    assert np.allclose(sched.alphas_cumprod.numpy()[:-1], expected[:-1], rtol=1e-10, atol=0)
    assert sched.betas[-1].item() == pytest.approx(0.999)
    assert bool((sched.betas[:-1] < 0.999).all())


@pytest.mark.parametrize("T", [1, 16, 100, 1000])
def test_squaredcos_cap_v2_equals_diffusers_betas_for_alpha_bar(T: int) -> None:
    """diffusers builds it without normalizing by f(0); the ratio makes it the cosine schedule."""

    def alpha_bar_fn(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    diffusers_betas = [
        min(1 - alpha_bar_fn((i + 1) / T) / alpha_bar_fn(i / T), 0.999) for i in range(T)
    ]
    ours = make_schedule("squaredcos_cap_v2", T).betas
    assert np.allclose(ours.numpy(), diffusers_betas, rtol=1e-9, atol=0)
    assert torch.allclose(ours, make_schedule("cosine", T).betas, rtol=1e-12, atol=0)


@FAST
@given(st.integers(2, 1000), st.floats(1e-5, 0.05), st.floats(0.0, 1.0))
def test_linear_endpoints(T: int, beta_start: float, frac: float) -> None:
    beta_end = beta_start + frac * (0.5 - beta_start)
    betas = make_schedule("linear", T, beta_start, beta_end).betas
    assert betas[0].item() == pytest.approx(beta_start, rel=1e-12)
    assert betas[-1].item() == pytest.approx(beta_end, rel=1e-12)


def _prior_warnings(*args: object) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_schedule(*args)  # type: ignore[arg-type]
    return [w for w in caught if issubclass(w.category, PriorMismatchWarning)]


@FAST
@given(st.integers(1, 1000), st.floats(1e-5, 0.05), st.floats(0.0, 1.0))
def test_prior_mismatch_warning_fires_iff_signal_left(
    T: int, beta_start: float, frac: float
) -> None:
    beta_end = beta_start + frac * (0.1 - beta_start)
    ab_last = make_schedule("linear", T, beta_start, beta_end).alphas_cumprod[-1].item()
    assert len(_prior_warnings("linear", T, beta_start, beta_end)) == int(
        ab_last > PRIOR_MISMATCH_THRESHOLD
    )


@pytest.mark.parametrize(("T", "fires"), [(50, True), (100, True), (200, True), (1000, False)])
def test_prior_mismatch_warning_for_default_linear(T: int, fires: bool) -> None:
    caught = _prior_warnings("linear", T)
    assert len(caught) == int(fires)
    if fires:
        msg = str(caught[0].message)
        ab_last = make_schedule("linear", T).alphas_cumprod[-1].item()
        assert f"{ab_last:.4g}" in msg and f"T = {T}" in msg
        assert "num_train_timesteps" in msg and "beta_end" in msg and "cosine" in msg
        assert caught[0].filename == __file__  # attributed to the caller, not the library


@pytest.mark.parametrize("name", ["cosine", "squaredcos_cap_v2"])
@pytest.mark.parametrize("T", [1, 2, 3, 8, 50, 100, 1000])
def test_prior_mismatch_warning_never_for_cosine(name: str, T: int) -> None:
    assert _prior_warnings(name, T) == []


@pytest.mark.parametrize(
    ("args", "exc", "needle"),
    [
        (("quadratic", 10), ValueError, "linear"),
        (("linear", 0), ValueError, "num_train_timesteps"),
        (("linear", 2.5), TypeError, "num_train_timesteps"),
        (("linear", True), TypeError, "num_train_timesteps"),
        (("linear", 10, 0.0, 0.02), ValueError, "beta_start"),
        (("linear", 10, 0.03, 0.02), ValueError, "beta_start"),
        (("linear", 10, 1e-4, 1.0), ValueError, "beta_end"),
        (("linear", 10, 1e-4, float("nan")), ValueError, "beta_end"),
        (("cosine", 10, 1e-4, 0.03), ValueError, "beta_end"),
    ],
)
def test_make_schedule_rejects_bad_args(args: tuple, exc: type[Exception], needle: str) -> None:
    with pytest.raises(exc, match=needle):
        make_schedule(*args)


def test_unknown_name_lists_accepted_names() -> None:
    with pytest.raises(ValueError) as info:
        make_schedule("sigmoid", 10)
    assert all(name in str(info.value) for name in SCHEDULES)


@pytest.mark.parametrize("betas", [[], [[0.1, 0.2]], [0.0, 0.1], [0.1, 1.0], [0.1, float("nan")]])
def test_noise_schedule_rejects_bad_betas(betas: list) -> None:
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule(betas)


def test_timestep_validation_names_t() -> None:
    sched = make_schedule("cosine", 10)
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="t must be"):
        sched.add_noise(x, x, torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 9\]"):
        sched.add_noise(x, x, torch.tensor([1, 10]))
    with pytest.raises(ValueError, match="B = len"):
        sched.add_noise(x, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="x0 and noise"):
        sched.add_noise(x, torch.zeros(2, 4), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="t must be"):
        sched.predict_x0(x, x, 3)  # type: ignore[arg-type]


def test_to_returns_new_immutable_schedule() -> None:
    sched = make_schedule("squaredcos_cap_v2", 100)
    moved = sched.to("cpu", dtype=torch.float32)
    assert moved is not sched and moved.alphas_cumprod.dtype == torch.float32
    assert sched.alphas_cumprod.dtype == torch.float64
    assert torch.allclose(moved.alphas_cumprod.double(), sched.alphas_cumprod, rtol=1e-6)
    assert moved.num_train_timesteps == 100 and moved.device == torch.device("cpu")
    with pytest.raises(AttributeError, match="immutable"):
        sched.betas = torch.zeros(3)  # type: ignore[misc]
