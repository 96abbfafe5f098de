"""Behaviour pin: sampler and policy outputs for fixed noise equal a stored reference.

The reference (``tests/data/sampler_reference.json``) was computed with the code before the
issue-17 refactor of the sampler contract and of the inference fast paths. Every sampler
(DDPM, DDIM, DPM-Solver++, consistency, flow Euler / Heun) runs a fixed nonlinear denoise
function from seeded noise; two tiny Diffusion Policies (batch 1, where the single-sample
convolution path applies, and batch 3) predict a chunk with their inference fast paths on.
Regenerate only for a deliberate change of behaviour, and say so in the commit:

    python tests/test_sampler_reference.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REFERENCE = Path(__file__).resolve().parent / "data" / "sampler_reference.json"
SHAPE = (3, 4, 2)


def _denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed nonlinear ``(B, H, D), (B,) -> (B, H, D)`` standing in for a network."""
    return 0.9 * x + 0.2 * torch.tanh(0.7 * x.roll(1, dims=1) + 0.013 * t.to(x.dtype).view(-1, 1, 1))


def _samplers() -> dict[str, tuple[object, int]]:
    from rlox_dp.diffusion import (
        ConsistencySampler,
        DDIMSampler,
        DDPMSampler,
        DPMSolverMultistepSampler,
        make_schedule,
    )
    from rlox_dp.diffusion.flow_samplers import FlowSampler

    cosine = make_schedule("squaredcos_cap_v2", 100)
    return {
        "ddpm_noclip_10": (DDPMSampler(cosine, clip_sample=False), 10),
        "ddpm_clip_10": (DDPMSampler(cosine), 10),
        "ddpm_sample_noclip_7": (DDPMSampler(cosine, "sample", clip_sample=False), 7),
        "ddim_eta0_5": (DDIMSampler(cosine, clip_sample=False, eta=0.0), 5),
        "ddim_eta05_clip08_6": (DDIMSampler(cosine, clip_sample_range=0.8, eta=0.5), 6),
        "dpmsolver2_6": (DPMSolverMultistepSampler(cosine, clip_sample=False), 6),
        "dpmsolver1_4": (DPMSolverMultistepSampler(cosine, "sample", solver_order=1), 4),
        "consistency_3": (ConsistencySampler(cosine, init_noise_scale=0.5), 3),
        "flow_euler_4": (FlowSampler(100, "euler"), 4),
        "flow_heun_4": (FlowSampler(100, "heun"), 4),
    }


def _policy_chunks() -> dict[str, list[float]]:
    from test_algorithms import build

    from rlox_dp.acceleration import accelerate

    out = {}
    for name, batch, options in (
        ("policy_unet_ddpm_b1", 1, {"down_dims": [64, 128], "n_groups": 8}),
        ("policy_unet_ddim_b3", 3, {"noise_scheduler_type": "DDIM", "num_inference_steps": 4,
                                        "clip_sample": False}),
    ):
        torch.manual_seed(0)
        policy, _ = build("diffusion", **options)
        # the fast paths were built in when the reference was written, GemmConv1d always
        accelerate(policy, gemm_conv=True).eval()
        obs = {"state": torch.randn(batch, 2, 3, generator=torch.Generator().manual_seed(1))}
        with torch.no_grad():  # the whole normalized chunk (B, H, D_act), before any clipping
            chunk = policy.sample_chunk(obs, torch.Generator().manual_seed(2))
        out[name] = chunk.flatten().tolist()
    return out


def compute() -> dict[str, list[float]]:
    """The outputs of every pinned case, flattened."""
    torch.set_num_threads(1)
    table = {}
    for name, (sampler, n) in _samplers().items():
        x = sampler.sample(_denoise, SHAPE, n, generator=torch.Generator().manual_seed(0))
        table[name] = x.flatten().tolist()
    table.update(_policy_chunks())
    return table


def test_outputs_equal_the_stored_reference():
    reference = json.loads(REFERENCE.read_text())
    got = compute()
    assert sorted(got) == sorted(reference)
    for name, values in reference.items():
        # Samplers: float32 elementwise updates with float64 coefficients, bit-stable; the
        # policies run float32 network kernels that may round differently on another CPU.
        tol = 1e-6 if not name.startswith("policy") else 1e-5
        assert got[name] == pytest.approx(values, rel=tol, abs=tol), name


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_sampler_reference.py --write")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    REFERENCE.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {REFERENCE}")
