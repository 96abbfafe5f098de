"""GPU readiness check for the image Diffusion Policy: correctness against the CPU, speed, memory, DDP.

One command, sized to stay under ~8 minutes on one GPU:

    python benchmarks/gpu_check.py                   # CUDA when available, the paper's image config
    python benchmarks/gpu_check.py --quick           # CPU-sized fallback (tiny networks; CI test)

On the device it
1. checks the first training steps: the same initial weights and the same batches (crop offsets,
   noise and timesteps drawn on the CPU) trained on the device and on the CPU; the losses must
   agree within ``LOSS_RTOL`` (float32, TF32 off) and ``LOSS_RTOL_BF16`` (bf16 autocast);
2. times training steps/s of the paper's image config (ResNet-18 GN, U-Net 256-512-1024, batch 64,
   84x84 crops of 96x96 frames) through the ``Trainer``, with and without bf16 autocast and
   ``torch.compile``, and the peak GPU memory of each;
3. times one action chunk (DDIM-10, one observation): eager, ``torch.compile`` and, on CUDA,
   CUDA graphs (``compile_mode="reduce-overhead"``);
4. runs the DDP path (NCCL) on all visible GPUs when there are at least two (gloo on the CPU with
   ``--ddp``);
and writes ``<out>/gpu_<device>.json``. Frames are synthetic (the PushT image shapes): speed does
not depend on the pixels, and the check needs no dataset.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlox_dp import Trainer
from rlox_dp.algorithms.bc import masked_mse
from rlox_dp.buffers import Batch, DemonstrationBuffer, Demonstrations

RESULTS = Path(__file__).resolve().parent / "results"
ENV = "gym_pusht/PushT-v0"
#: largest relative difference allowed between device and CPU losses of the first steps
LOSS_RTOL = 1e-2
LOSS_RTOL_BF16 = 5e-2

#: the paper's image config (the library's defaults: ResNet-18 GN, U-Net 256-512-1024), DDIM-10 chunks
PAPER = {"obs": "image", "batch_size": 64, "noise_scheduler_type": "DDIM", "num_inference_steps": 10,
         "n_obs_steps": 2, "horizon": 16, "n_action_steps": 8, "log_every": 10**9,
         "checkpoint_every": 10**9, "n_eval_episodes": 0}
#: CI-sized: the compact encoder and a tiny U-Net at batch 4
QUICK = {**PAPER, "batch_size": 4, "vision_backbone": "compact", "down_dims": (16, 32), "n_groups": 4,
         "diffusion_step_embed_dim": 16, "num_train_timesteps": 10, "num_inference_steps": 2}


def synthetic_demos(n_episodes: int = 4, length: int = 40, seed: int = 0) -> Demonstrations:
    """PushT-shaped image demonstrations: ``image (N, 3, 96, 96)`` uint8, ``agent_pos (N, 2)``."""
    rng = np.random.default_rng(seed)
    n = n_episodes * length
    return Demonstrations(
        observations={"image": rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8),
                      "agent_pos": rng.uniform(0, 512, (n, 2)).astype(np.float32)},
        actions=rng.uniform(0, 512, (n, 2)).astype(np.float32),
        episode_ends=np.arange(length, n + 1, length))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def loss_trajectory(trainer: Trainer, state: dict[str, torch.Tensor], batches: list[Batch],
                    device: torch.device, bf16: bool) -> list[float]:
    """Losses of training ``trainer``'s policy from ``state`` on ``batches`` (one step each) on
    ``device``; crop offsets, noise and timesteps come from CPU generators (same on every device)."""
    policy = copy.deepcopy(trainer.policy).to(device)
    policy.load_state_dict(state)
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=trainer.training.lr)
    losses = []
    for k, batch in enumerate(batches):
        generator = torch.Generator().manual_seed(k)
        batch = batch.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            cond = policy.obs_encoder(batch.obs, generator)
            noise = torch.randn(batch.action.shape, generator=generator).to(device)
            t = torch.randint(0, policy.config.num_train_timesteps, (batch.action.shape[0],),
                              generator=generator).to(device)
            noisy = policy._schedule_on(device).add_noise(batch.action, noise, t)
            loss = masked_mse(policy.denoiser(noisy, t, cond).float(), noise, batch.action_is_pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def check_losses(trainer: Trainer, device: torch.device, n_steps: int) -> dict[str, Any]:
    """First ``n_steps`` losses on ``device`` (float32 and bf16) against float32 on the CPU."""
    buffer: DemonstrationBuffer = trainer.buffer
    generator = torch.Generator().manual_seed(0)
    batches = [buffer.sample(trainer.training.batch_size, generator) for _ in range(n_steps)]
    state = {k: v.detach().cpu().clone() for k, v in trainer.policy.state_dict().items()}
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cpu = loss_trajectory(trainer, state, batches, torch.device("cpu"), bf16=False)
        fp32 = loss_trajectory(trainer, state, batches, device, bf16=False)
        bf16 = loss_trajectory(trainer, state, batches, device, bf16=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    worst = lambda losses: max(abs(a - b) / abs(b) for a, b in zip(losses, cpu, strict=True))  # noqa: E731
    result = {"cpu_float32": cpu, "device_float32": fp32, "device_bf16": bf16,
              "max_rel_diff_float32": worst(fp32), "max_rel_diff_bf16": worst(bf16),
              "rtol_float32": LOSS_RTOL, "rtol_bf16": LOSS_RTOL_BF16}
    result["ok"] = result["max_rel_diff_float32"] <= LOSS_RTOL and result["max_rel_diff_bf16"] <= LOSS_RTOL_BF16
    return result


def time_training(config: dict[str, Any], device: torch.device, demos: Demonstrations, steps: int,
                  warmup: int, log_dir: Path) -> dict[str, Any]:
    """Steps/s of ``config`` on ``device`` after ``warmup`` steps (compilation included there)."""
    trainer = Trainer("diffusion", env=ENV, config=config, demos=demos, device=device, seed=0,
                      log_dir=log_dir, progress=False, preset=False)
    trainer.train(warmup, evaluate=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    metrics = trainer.train(warmup + steps, evaluate=False)
    out = {"steps_per_s": metrics["steps_per_s"], "loss": metrics["loss"], "steps": steps}
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def time_chunks(trainer: Trainer, device: torch.device, modes: list[str], calls: int) -> dict[str, float]:
    """Median seconds of one DDIM chunk for one observation, per mode (eager / compile modes)."""
    obs = {k: v[:1] for k, v in trainer.buffer.sample(1).obs.items()}
    obs = {k: v.to(device) for k, v in obs.items()}
    out = {}
    for mode in modes:
        policy = copy.deepcopy(trainer.eval_policy).to(device).eval()
        if mode != "eager":
            policy.compile_networks(mode=mode)
        with torch.no_grad():
            for _ in range(3):  # warm-up: compilation, CUDA graph capture, allocator
                policy.predict_normalized_actions(obs)
            times = []
            for _ in range(calls):
                _sync(device)
                start = time.perf_counter()
                policy.predict_normalized_actions(obs)
                _sync(device)
                times.append(time.perf_counter() - start)
        out[mode] = statistics.median(times)
    return out


def ddp_check(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Train a few steps under ``torchrun`` on all visible GPUs (NCCL) or 2 CPU processes (gloo)."""
    n_procs = torch.cuda.device_count() if device.type == "cuda" else 2
    if device.type == "cuda" and n_procs < 2:
        return {"skipped": f"{n_procs} GPU visible: DDP needs at least two"}
    if device.type == "cpu" and not args.ddp:
        return {"skipped": "CPU: run with --ddp for a gloo check"}
    with tempfile.TemporaryDirectory(prefix="rlox_dp_ddp_") as tmp:
        report = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n_procs}",
               __file__, "--ddp-worker", str(report), "--device", device.type,
               *(["--quick"] if args.quick else [])]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0 or not report.exists():
            return {"ok": False, "world_size": n_procs, "stderr_tail": proc.stderr[-2000:]}
        return {"ok": True, **json.loads(report.read_text()), "wall_s": time.perf_counter() - start}


def ddp_worker(args: argparse.Namespace) -> None:
    """One torchrun rank: train a few steps; rank 0 writes the report."""
    config = {**(QUICK if args.quick else PAPER)}
    with tempfile.TemporaryDirectory(prefix="rlox_dp_ddp_rank_") as tmp:
        trainer = Trainer("diffusion", env=ENV, config=config, demos=synthetic_demos(), seed=0,
                          device="auto" if args.device == "cuda" else "cpu", log_dir=Path(tmp) / "run",
                          progress=False, preset=False)
        metrics = trainer.train(3, evaluate=False)
        if trainer.dist.is_main:
            Path(args.ddp_worker).write_text(json.dumps(
                {"world_size": trainer.dist.world_size, "loss": metrics["loss"], "steps": 3,
                 "backend": torch.distributed.get_backend() if trainer.dist.enabled else None}))


def device_name(device: torch.device) -> str:
    """``nvidia_h200`` style name of ``device`` (``cpu`` for the CPU)."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the checks and write ``<out>/gpu_<device>.json``; returns the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cpu")
    parser.add_argument("--quick", action="store_true", help="CI-sized: tiny networks, batch 4")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default 100; 3 quick)")
    parser.add_argument("--compile", action="store_true", help="also the torch.compile variants on the CPU")
    parser.add_argument("--ddp", action="store_true", help="also the gloo DDP check on the CPU")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args)
        return {}
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    steps = args.steps or (3 if args.quick else 100)
    warmup = 1 if args.quick else 10
    config = QUICK if args.quick else PAPER
    compiled = device.type == "cuda" or args.compile
    demos = synthetic_demos()
    start = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu_check", "device": str(device), "device_name": device_name(device),
        "quick": args.quick, "config": {k: v for k, v in config.items() if k != "log_every"},
        "torch": torch.__version__, "cuda": torch.version.cuda, "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"), "gpus_visible": torch.cuda.device_count()}
    with tempfile.TemporaryDirectory(prefix="rlox_dp_gpu_check_") as tmp:
        reference = Trainer("diffusion", env=ENV, config=config, demos=demos, device="cpu", seed=0,
                            log_dir=Path(tmp) / "reference", progress=False, preset=False)
        result["n_parameters"] = sum(p.numel() for p in reference.policy.parameters())
        result["loss_check"] = check_losses(reference, device, n_steps=3 if args.quick else 5)
        print(f"loss check ({'ok' if result['loss_check']['ok'] else 'FAILED'}): float32 rel diff "
              f"{result['loss_check']['max_rel_diff_float32']:.2e}, bf16 "
              f"{result['loss_check']['max_rel_diff_bf16']:.2e}", flush=True)
        variants = [("float32", "no", False), ("bf16", "bf16", False)]
        if compiled:
            variants += [("float32 compiled", "no", True), ("bf16 compiled", "bf16", True)]
        result["training"] = {}
        for name, mixed, compile_model in variants:
            cfg = {**config, "mixed_precision": mixed, "compile_model": compile_model}
            result["training"][name] = time_training(cfg, device, demos, steps, warmup,
                                                     Path(tmp) / name.replace(" ", "_"))
            print(f"training {name}: {result['training'][name]['steps_per_s']:.2f} steps/s", flush=True)
        modes = ["eager"] + (["default"] if compiled else []) + (["reduce-overhead"] if device.type == "cuda" else [])
        chunk_trainer = Trainer("diffusion", env=ENV, config=config, demos=demos, device=device, seed=0,
                                log_dir=Path(tmp) / "chunks", progress=False, preset=False)
        result["chunk_latency_s"] = time_chunks(chunk_trainer, device, modes, calls=5 if args.quick else 30)
        print(f"chunk latency: {result['chunk_latency_s']}", flush=True)
    result["ddp"] = ddp_check(args, device)
    print(f"ddp: {result['ddp']}", flush=True)
    best = max(v["steps_per_s"] for v in result["training"].values())
    result["projected_lerobot_200k_steps_h"] = 200_000 / best / 3600 if not args.quick else None
    result["wall_s"] = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu_{result['device_name']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
