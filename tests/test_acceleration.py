"""rlox_dp.acceleration: every inference fast path gives the plain path's outputs.

(The compiled denoising loop is checked in ``test_compile.py``, ``test_dpm_solver.py`` and
``test_transformer.py``, which need a C compiler.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TINY, assert_conditioned_matches_forward, build, pendulum_demos
from torch import nn

from rlox_dp import Trainer, acceleration, load_policy
from rlox_dp.acceleration import (
    GEMM_CONV_ENV,
    Acceleration,
    GemmConv1d,
    _gemm_applies,
    accelerate,
    choose_convolutions,
    film_conditioned,
    film_table,
    gemm_conv_is_faster,
)
from rlox_dp.networks import ConditionalUnet1D

TINY_UNET = dict(down_dims=(8, 16), kernel_size=3, n_groups=4, diffusion_step_embed_dim=8)


def _inputs(batch: int, horizon: int = 8, action_dim: int = 2, cond_dim: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, horizon, action_dim, generator=g),
            torch.randint(0, 100, (batch,), generator=g), torch.randn(batch, cond_dim, generator=g))


@pytest.mark.parametrize("scale", [True, False])
def test_film_table_conditioning_matches_forward(scale):
    """Precomputed FiLM parameters (film_table / film_conditioned) give forward's output."""
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 8, 3, **{**TINY_UNET, "use_film_scale_modulation": scale}).eval()
    x, _, c = _inputs(4)
    steps = [99, 74, 49, 24]
    film_dim = sum(block.cond_encoder[1].out_features for block in net.film_blocks)
    assert film_table(net, torch.tensor(steps), c).shape == (4, 4, film_dim)
    assert_conditioned_matches_forward(film_conditioned(net, c, steps), lambda x, t: net(x, t, c), x,
                                       steps, unplanned=50)
    with pytest.raises(ValueError, match="timesteps"):
        film_conditioned(net, c, [5, 5])


@pytest.mark.parametrize("c_in,c_out,length,kernel", [(128, 64, 4, 5), (64, 128, 7, 3), (8, 8, 5, 3)])
def test_gemm_conv1d_matches_conv1d(c_in, c_out, length, kernel):
    """The batch-1 inference GEMM path equals nn.Conv1d; batches and autograd use nn.Conv1d."""
    torch.manual_seed(0)
    conv = GemmConv1d(c_in, c_out, kernel, padding=kernel // 2)
    ref = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2)
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(1, c_in, length)
    with torch.no_grad():
        assert conv._use_gemm(x) == (c_in * c_out >= GemmConv1d.min_channel_product)
        torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)
        assert not conv._use_gemm(torch.randn(2, c_in, length))
    assert not conv._use_gemm(x)  # autograd on: nn.Conv1d.forward
    conv(x).sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize("gemm_conv", [True, False])
@pytest.mark.parametrize(("batch", "options"), [
    (1, {"down_dims": [64, 128], "n_groups": 8}),  # wide enough for the GEMM convolutions
    (3, {"noise_scheduler_type": "DDIM", "num_inference_steps": 4}),
])
def test_accelerated_policy_matches_plain(batch, options, gemm_conv):
    """accelerate(policy): same chunks as the plain policy, same parameters and state dict."""
    torch.manual_seed(0)
    plain, _ = build("diffusion", **options)
    fast = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    assert plain.acceleration is None
    assert accelerate(fast, gemm_conv=gemm_conv) is fast
    assert isinstance(fast.acceleration, Acceleration) and list(fast.state_dict()) == keys
    convs = [m for m in fast.denoiser.modules() if isinstance(m, nn.Conv1d) and _gemm_applies(m)]
    assert all((type(m) is GemmConv1d) == gemm_conv for m in convs)
    assert len(convs) == (9 if batch == 1 else 0)  # the tiny U-Net is too narrow for it
    assert not any(type(m) is GemmConv1d for m in plain.modules())
    obs = {"state": torch.randn(batch, 2, 3, generator=torch.Generator().manual_seed(1))}
    with torch.no_grad():
        a, b = (p.eval().sample_chunk(obs, torch.Generator().manual_seed(2)) for p in (plain, fast))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    copied = copy.deepcopy(fast)  # e.g. the EMA copy keeps the fast paths
    assert isinstance(copied.acceleration, Acceleration) and copied.acceleration is not fast.acceleration


def test_accelerate_leaves_other_policies_alone():
    bc, _ = build("bc")
    assert accelerate(bc) is bc and not hasattr(bc, "acceleration")


def test_trainer_and_load_policy_accelerate(tmp_path):
    """The library's inference entry points switch the fast paths on (as before the split)."""
    trainer = Trainer("diffusion", env="Pendulum-v1", config=TINY["diffusion"], demos=pendulum_demos(),
                      device="cpu", log_dir=tmp_path / "run", progress=False, preset=False)
    assert isinstance(trainer.policy.acceleration, Acceleration)
    assert isinstance(trainer.eval_policy.acceleration, Acceleration)
    path = tmp_path / "policy.safetensors"
    trainer.save_policy(path)
    assert isinstance(load_policy(path).acceleration, Acceleration)


def _candidates(net):
    return [m for m in net.modules() if isinstance(m, nn.Conv1d) and _gemm_applies(m)]


def test_gemm_conv_choice_is_timed_cached_and_overridable(monkeypatch):
    """"auto" follows the timing (once per shape, cached), "1" / "0" / the argument override it;
    whatever the choice, batch-1 inference gives the plain path's output."""
    monkeypatch.delenv(GEMM_CONV_ENV, raising=False)
    monkeypatch.setattr(acceleration, "_GEMM_DECISIONS", {})
    timings = {"plain": 2.0, "gemm": 1.0}
    calls = []

    def fake_medians(first, second, rounds):
        calls.append(rounds)
        return timings["plain"], timings["gemm"]

    monkeypatch.setattr(acceleration, "_alternating_medians", fake_medians)
    torch.manual_seed(0)
    net = ConditionalUnet1D(2, 8, 3, down_dims=(64, 128), kernel_size=5).eval()
    x, t, c = _inputs(1)
    with torch.no_grad():
        plain = net(x, t, c)
    candidates = _candidates(net)
    assert len(candidates) == 9 and all(type(m) is nn.Conv1d for m in net.modules()
                                        if isinstance(m, nn.Conv1d))

    def chosen(gemm_conv=None) -> set[type]:
        choose_convolutions(net, gemm_conv)
        with torch.no_grad():
            torch.testing.assert_close(net(x, t, c), plain, rtol=1e-5, atol=1e-5)
        assert all(type(m) is nn.Conv1d for m in net.modules()
                   if isinstance(m, nn.Conv1d) and m not in candidates)
        return {type(m) for m in candidates}

    assert chosen() == {GemmConv1d} and 1 <= len(calls) <= len(candidates)  # one timing per shape
    timed = len(calls)
    timings.update(plain=1.0, gemm=2.0)
    assert chosen("auto") == {GemmConv1d} and len(calls) == timed  # cached in this process
    monkeypatch.setattr(acceleration, "_GEMM_DECISIONS", {})
    assert chosen("auto") == {nn.Conv1d} and len(calls) == 2 * timed
    monkeypatch.setenv(GEMM_CONV_ENV, "1")
    assert chosen() == {GemmConv1d}
    monkeypatch.setenv(GEMM_CONV_ENV, "0")
    assert chosen() == {nn.Conv1d} and chosen(True) == {GemmConv1d}  # the argument wins
    assert len(calls) == 2 * timed  # forced choices time nothing
    monkeypatch.setenv(GEMM_CONV_ENV, "fast")
    with pytest.raises(ValueError, match=GEMM_CONV_ENV):
        choose_convolutions(net)


def test_gemm_conv_timing_runs_and_is_cached(monkeypatch):
    monkeypatch.setattr(acceleration, "_GEMM_DECISIONS", {})
    conv = nn.Conv1d(128, 128, 5, padding=2)
    state = torch.random.get_rng_state()
    first = gemm_conv_is_faster(conv, 4, rounds=3)
    assert isinstance(first, bool) and len(acceleration._GEMM_DECISIONS) == 1
    assert gemm_conv_is_faster(conv, 4, rounds=3) == first
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
