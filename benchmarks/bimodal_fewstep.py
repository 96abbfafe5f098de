"""Few-step action generation on rlox_dp/BimodalPoint-v0: does a 1-3 evaluation policy keep both modes?

Trains, on the multimodal benchmark's demonstrations (``benchmarks/multimodal.py``: 100 expert
episodes, each passing the obstacle on a random side) and with its Diffusion Policy network and
budget, one seed of

* ``diffusion``: the Diffusion Policy teacher, evaluated with DDPM over all 100 steps (the
  reference), DDIM and DPM-Solver++ at few steps (DPM-Solver++ equals DDIM at 1 and 2 steps, its
  first and final steps being first order, so it is listed from 3 steps on);
* ``flow``: flow matching with the same network and budget, Euler and Heun (``2n - 1``
  evaluations);
* ``consistency``: a student distilled from that teacher's checkpoint (``--cd-steps`` steps),
  multistep consistency sampling, with the full and with a reduced initial noise scale;

and evaluates every setting on the held-out episode seeds ``0 .. --episodes - 1``: success rate
(95 % Wilson interval), collision rate, and the side (left / right of the obstacle) of every
successful episode. Writes ``<out>/bimodal_fewstep.json`` and prints a table.

    python benchmarks/bimodal_fewstep.py                 # ~6 min on one busy CPU thread
    python benchmarks/bimodal_fewstep.py --quick         # smoke setting (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlox_dp import Trainer
from rlox_dp.envs import BIMODAL_ENV_ID
from rlox_dp.evaluation import rollout
from rlox_dp.experts import default_demonstrations

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import wilson_interval  # noqa: E402
from multimodal import DEMO_SEED, EVAL_ENVS, EVAL_SEED, VARIANTS, episode_side  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: the multimodal benchmark's Diffusion Policy (MLP denoiser, H=8, x0 prediction, T=100).
BASE = dict(VARIANTS["diffusion"][1])
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "diffusion": ("diffusion", BASE),
    "flow": ("flow", {**BASE, "noise_scheduler_type": "Euler", "num_inference_steps": 1}),
    "consistency": ("consistency", {"batch_size": 64, "lr": 3e-4, "lr_warmup_steps": 100}),
}
#: model -> [(sampler, steps, extra configure_inference kwargs)]
SETTINGS: dict[str, list[tuple[str, int, dict[str, float]]]] = {
    "diffusion": [("DDPM", 100, {}), ("DDIM", 1, {}), ("DDIM", 2, {}), ("DDIM", 3, {}),
                  ("DPMSolver++", 3, {}), ("DDIM", 10, {}), ("DPMSolver++", 10, {})],
    "flow": [("Euler", 1, {}), ("Euler", 2, {}), ("Euler", 3, {}), ("Heun", 2, {}),
             ("Euler", 10, {})],
    "consistency": [("Consistency", n, {"init_noise_scale": s}) for s in (1.0, 0.1)
                    for n in (1, 2, 3)],
}
QUICK = {"hidden_dim": 32, "n_layers": 1, "total_steps": 20, "lr_warmup_steps": 2}


def network_evaluations(sampler: str, steps: int) -> int:
    """Denoiser calls per chunk: Heun ``2n - 1``, every other sampler ``n``."""
    return 2 * steps - 1 if sampler == "Heun" else steps


def evaluate_setting(trainer: Trainer, sampler: str, steps: int, extra: dict[str, float],
                     episodes: int) -> dict[str, Any]:
    """Success, collisions and sides of ``episodes`` held-out episodes under one sampler setting."""
    policy = trainer.eval_policy
    policy.eval()
    policy.configure_inference(sampler, steps, **extra)
    policy.reset()
    t0 = time.perf_counter()
    result = rollout(policy, BIMODAL_ENV_ID, list(range(EVAL_SEED, EVAL_SEED + episodes)),
                     n_envs=EVAL_ENVS, record=True)
    policy.reset()
    successes = [e for e in result.episodes if e.success]
    sides = [episode_side(e.observations["state"]) for e in successes]
    return {"sampler": sampler, "num_inference_steps": steps, **extra,
            "network_evaluations": network_evaluations(sampler, steps),
            "success_rate": wilson_interval(len(successes), len(result.episodes)),
            "collision_rate": float(np.mean([e.episode_return < 0 for e in result.episodes])),
            "left": sides.count(-1), "right": sides.count(1),
            "eval_time_s": time.perf_counter() - t0}


def train(model: str, args: argparse.Namespace, demos: Any, log_root: Path,
          teacher_path: Path | None) -> tuple[Trainer, dict[str, float]]:
    """Train ``model`` (the consistency student from ``teacher_path``) on ``demos``."""
    algorithm, overrides = MODELS[model]
    config = {**overrides, "n_demos": args.n_demos, "log_every": 100, "checkpoint_every": 10**9,
              "n_eval_episodes": 0}
    if model == "consistency":
        config.update(teacher=str(teacher_path), total_steps=args.cd_steps)
        config.update({k: v for k, v in (("distillation_stride", args.stride),
                                         ("dsm_weight", args.dsm_weight)) if v is not None})
    if args.quick:
        config.update({k: v for k, v in QUICK.items() if model != "consistency" or k == "total_steps"})
    trainer = Trainer(algorithm, env=BIMODAL_ENV_ID, config=config, demos=demos, seed=args.seed,
                      device="cpu", log_dir=log_root / model, progress=False, preset=False)
    metrics = trainer.train(evaluate=False)
    return trainer, metrics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=None, help="held-out episodes (default 50; 4 with --quick)")
    parser.add_argument("--n-demos", type=int, default=None, help="expert episodes (default 100; 10 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--cd-steps", type=int, default=1500, help="consistency distillation steps")
    parser.add_argument("--stride", type=int, default=None,
                        help="consistency distillation_stride (default: the config's)")
    parser.add_argument("--dsm-weight", type=float, default=None,
                        help="consistency dsm_weight (default: the config's)")
    parser.add_argument("--models", default="diffusion,flow,consistency",
                        help="comma-separated subset (consistency needs diffusion or --teacher)")
    parser.add_argument("--teacher", default=None, help="reuse this teacher checkpoint instead of training one")
    parser.add_argument("--keep", default=None, help="directory to keep the checkpoints in")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets (smoke test)")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument("--name", default="bimodal_fewstep", help="results file name (without .json)")
    args = parser.parse_args(argv)
    args.episodes = args.episodes if args.episodes is not None else (4 if args.quick else 50)
    args.n_demos = args.n_demos if args.n_demos is not None else (10 if args.quick else 100)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {unknown}; expected a subset of {list(MODELS)}")
    if "consistency" in args.models and "diffusion" not in args.models and args.teacher is None:
        parser.error("--models: consistency needs a teacher: include diffusion or give --teacher")
    if args.quick:
        args.cd_steps = min(args.cd_steps, 20)
    return args


def print_table(result: dict[str, Any]) -> None:
    """One line per model x sampler setting."""
    print(f"\n{result['env']}: seed {result['seed']}, {result['episodes']} held-out episodes, "
          f"{result['threads']} thread(s)")
    print(f"{'model':12s} {'sampler':18s} {'NFE':>4s} {'success [95% CI]':>22s} {'collide':>8s} "
          f"{'left':>5s} {'right':>5s}")
    for r in result["rows"]:
        s = r["success_rate"]
        label = f"{r['sampler']}{r['num_inference_steps']}"
        if "init_noise_scale" in r:
            label += f" x{r['init_noise_scale']:g}"
        print(f"{r['model']:12s} {label:18s} {r['network_evaluations']:>4d} "
              f"{s['mean']:>8.2f} [{s['low']:.2f}, {s['high']:.2f}] {r['collision_rate']:>8.2f} "
              f"{r['left']:>5d} {r['right']:>5d}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able result also written to ``--out``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    training: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="rlox_dp_bimodal_fewstep_") as tmp:
        keep = Path(args.keep) if args.keep else Path(tmp) / "checkpoints"
        demos = default_demonstrations(BIMODAL_ENV_ID, n_episodes=args.n_demos, seed=DEMO_SEED,
                                       cache_dir=Path(tmp) / "cache", progress=False)
        teacher_path = Path(args.teacher) if args.teacher else None
        for model in args.models:
            trainer, metrics = train(model, args, demos, Path(tmp) / "runs", teacher_path)
            path = trainer.save(keep / f"{model}-{args.seed}.safetensors")
            if model == "diffusion":
                teacher_path = path
            training[model] = {"train_time_s": metrics["train_time_s"], "final_loss": metrics["loss"],
                               "steps": int(metrics["step"]), "config": {**trainer.config.to_dict(), **trainer.training.to_dict()}}
            if model == "consistency":  # the teacher's training time is part of the student's
                training[model]["teacher"] = str(teacher_path)
                training[model]["teacher_train_time_s"] = training.get("diffusion", {}).get("train_time_s")
            print(f"{model}: trained {int(metrics['step'])} steps in {metrics['train_time_s']:.0f} s, "
                  f"loss {metrics['loss']:.4f}", flush=True)
            for sampler, steps, extra in SETTINGS[model]:
                if args.quick and steps > 3 and sampler != "DDPM":
                    continue
                if args.quick and sampler == "DDPM":
                    steps = trainer.config.num_train_timesteps
                row = {"model": model, **evaluate_setting(trainer, sampler, steps, extra, args.episodes)}
                rows.append(row)
                s = row["success_rate"]
                print(f"  {sampler}{steps} {extra or ''}: success {s['mean']:.2f} "
                      f"(left {row['left']}, right {row['right']}), collisions "
                      f"{row['collision_rate']:.2f}", flush=True)
    result = {"benchmark": "bimodal_fewstep", "env": BIMODAL_ENV_ID, "date": time.strftime("%Y-%m-%d"),
              "torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
              "python": platform.python_version(), "quick": args.quick, "seed": args.seed,
              "episodes": args.episodes, "eval_seeds": [EVAL_SEED, EVAL_SEED + args.episodes - 1],
              "demos": {"n_episodes": args.n_demos, "seed": DEMO_SEED}, "training": training,
              "rows": rows}
    path = out / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
