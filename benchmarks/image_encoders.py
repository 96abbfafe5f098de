"""Image encoder candidates for PushT: cost of one Diffusion Policy training step, side by side.

Every candidate is a whole image Diffusion Policy (encoder + U-Net 32-64-128, the PushT image
windows, batch 64 of two 96x96 frames, 84x84 random crops) trained with fused AdamW; one training
step of each is timed in turn, round after round, in this one process, so that all candidates
see the same machine load. Reported: the median step time per candidate and its ratio to the
paper's ResNet-18 GN in float32 (the reference); only the ratios are meaningful on a busy
machine. Writes ``<out>/pusht_image_encoders.json``.

    python benchmarks/image_encoders.py                # ~5 min on one CPU thread
    python benchmarks/image_encoders.py --quick        # tiny images, seconds (smoke test)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlox_dp.algorithms.diffusion import DiffusionConfig, DiffusionPolicy
from rlox_dp.buffers import Batch, Normalizer
from rlox_dp.networks.encoders import CompactConvEncoder
from rlox_dp.networks.precision import bf16_is_fast

RESULTS = Path(__file__).resolve().parent / "results"
REFERENCE = "resnet18 fp32"

#: name -> (vision_backbone, precision, compact channels, compact strides)
CANDIDATES: dict[str, tuple[str, str, tuple[int, ...] | None, tuple[int, ...] | None]] = {
    REFERENCE: ("resnet18", "float32", None, None),
    "resnet18 bf16": ("resnet18", "bfloat16", None, None),
    "compact 16-32-64 s2-2-1 fp32": ("compact", "float32", (16, 32, 64), (2, 2, 1)),
    "compact 16-32-64 s2-2-1 bf16": ("compact", "bfloat16", (16, 32, 64), (2, 2, 1)),
    "compact 16-32-32-64 s2-2-1-1 fp32": ("compact", "float32", (16, 32, 32, 64), (2, 2, 1, 1)),
    "compact 32-64 s2-2 fp32": ("compact", "float32", (32, 64), (2, 2)),
    "compact 32-32-64-64 s2-1-2-1 fp32": ("compact", "float32", (32, 32, 64, 64), (2, 1, 2, 1)),
    "compact 32-32-64-64 s2-1-2-1 bf16": ("compact", "bfloat16", (32, 32, 64, 64), (2, 1, 2, 1)),
}


def build(candidate: str, image: int, crop: int) -> tuple[DiffusionPolicy, torch.optim.Optimizer]:
    """The policy of ``candidate`` for ``(3, image, image)`` frames and its fused AdamW."""
    backbone, precision, channels, strides = CANDIDATES[candidate]
    obs_space = gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (3, image, image), np.uint8),
                                 "agent_pos": gym.spaces.Box(0, 512, (2,), np.float32)})
    act_space = gym.spaces.Box(0, 512, (2,), np.float32)
    raw = {"image": np.zeros((2, 3, image, image), np.uint8), "agent_pos": np.zeros((2, 2), np.float32),
           "action": np.array([[0, 0], [512, 512]], np.float32)}
    normalizer = Normalizer.fit(raw, {"image": "image", "agent_pos": "min_max", "action": "min_max"})
    config = DiffusionConfig(n_obs_steps=2, horizon=16, n_action_steps=8, down_dims=(32, 64, 128),
                             vision_backbone=backbone, vision_precision=precision, crop_shape=(crop, crop))
    torch.manual_seed(0)
    policy = DiffusionPolicy(config, obs_space, act_space, normalizer)
    if channels is not None:  # the candidate's trunk in place of the default compact one
        encoders = policy.obs_encoder.image_encoder.encoders
        encoders[0] = CompactConvEncoder((3, image, image), channels=channels, strides=strides,
                                         crop_shape=(crop, crop), precision=precision)
    return policy, torch.optim.AdamW(policy.parameters(), lr=1e-4, fused=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time the candidates (alternating rounds); print and write the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="48x48 frames, batch 4, 1 round")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    image, crop, batch_size = (48, 40, 4) if args.quick else (96, 84, args.batch_size)
    rounds = 1 if args.quick else args.rounds
    batch = Batch(obs={"image": torch.rand(batch_size, 2, 3, image, image),
                       "agent_pos": torch.rand(batch_size, 2, 2)},
                  action=torch.rand(batch_size, 16, 2) * 2 - 1,
                  action_is_pad=torch.zeros(batch_size, 16, dtype=torch.bool))
    models = {name: build(name, image, crop) for name in CANDIDATES}
    generator = torch.Generator().manual_seed(0)

    def step(name: str) -> float:
        policy, optimizer = models[name]
        start = time.perf_counter()
        loss, _ = policy.compute_loss(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for name in CANDIDATES:  # warm-up (allocations, oneDNN primitive caches)
        step(name)
    times: dict[str, list[float]] = {name: [] for name in CANDIDATES}
    for _ in range(rounds):
        for name in CANDIDATES:
            repeats = 1 if CANDIDATES[name][0] == "resnet18" else 3
            times[name].append(statistics.median(step(name) for _ in range(repeats)))
    reference = statistics.median(times[REFERENCE])
    rows = {}
    for name, values in times.items():
        policy = models[name][0]
        encoder = policy.obs_encoder.image_encoder.encoders[0]
        median = statistics.median(values)
        rows[name] = {"step_s": median, "cheaper_than_reference": reference / median,
                      "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
                      "feature_map": [encoder.pool.in_h, encoder.pool.in_w]}
        print(f"{name:36s} {median:7.3f} s/step  {reference / median:5.1f}x cheaper than {REFERENCE}  "
              f"({rows[name]['encoder_parameters']:,} encoder parameters, feature map "
              f"{encoder.pool.in_h}x{encoder.pool.in_w})")
    result = {"benchmark": "pusht_image_encoders", "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "machine": platform.machine(), "threads": args.threads,
              "cpu_bf16_native": bf16_is_fast("cpu"), "batch_size": batch_size, "image": image,
              "crop": crop, "rounds": rounds, "quick": args.quick, "reference": REFERENCE,
              "denoiser": "unet (32, 64, 128)", "candidates": rows,
              "note": "one process, candidates alternated each round; ratios only (shared machine)"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "pusht_image_encoders.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'pusht_image_encoders.json'}")
    return result


if __name__ == "__main__":
    main()
