"""rlox_dp.acceleration: every inference fast path gives the plain path's outputs.

(The compiled denoising loop is checked in ``test_compile.py``, ``test_dpm_solver.py`` and
``test_transformer.py``, which need a C compiler.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import TINY, assert_conditioned_matches_forward, pendulum_demos
from test_algorithms import build
from torch import nn

from rlox_dp import Trainer, load_policy
from rlox_dp.acceleration import Acceleration, GemmConv1d, accelerate, film_conditioned, film_table
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


@pytest.mark.parametrize(("batch", "options"), [
    (1, {"down_dims": [64, 128], "n_groups": 8}),  # wide enough for the GEMM convolutions
    (3, {"noise_scheduler_type": "DDIM", "num_inference_steps": 4}),
])
def test_accelerated_policy_matches_plain(batch, options):
    """accelerate(policy): same chunks as the plain policy, same parameters and state dict."""
    torch.manual_seed(0)
    plain, _ = build("diffusion", **options)
    fast = copy.deepcopy(plain)
    keys = list(plain.state_dict())
    assert plain.acceleration is None
    assert accelerate(fast) is fast and isinstance(fast.acceleration, Acceleration)
    assert list(fast.state_dict()) == keys
    convs = [m for m in fast.denoiser.modules() if isinstance(m, nn.Conv1d)]
    assert convs and all(type(m) is GemmConv1d for m in convs)
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
