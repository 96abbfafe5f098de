"""Pendulum-v1 (or another env with a built-in SB3 expert): Diffusion Policy vs BC on expert demos.

Trains the built-in SB3 expert once (cached), collects its demonstrations, then for each training
seed trains BC and Diffusion Policy (the env's presets) on the SAME demos and evaluates each on
the same 20 held-out episode seeds; diffusion is evaluated with DDPM over all steps and with DDIM
over 10 steps. Writes ``benchmarks/results/pendulum.json`` (``--env X``: ``results/<x>.json``)
and prints a table.

    python benchmarks/pendulum.py                 # 3 seeds, preset budgets (~15 min on 2 cores)
    python benchmarks/pendulum.py --env InvertedDoublePendulum-v5    # MuJoCo (pip install mujoco)
    python benchmarks/pendulum.py --seeds 1 --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rlox_dp import Trainer
from rlox_dp.experts import default_cache_dir

RESULTS = Path(__file__).resolve().parent / "results"


def _run(algo: str, seed: int, args: argparse.Namespace, log_root: Path) -> dict:
    config = {"n_eval_episodes": args.episodes, "n_eval_envs": 10}
    if args.quick:
        config["total_steps"] = 20
    trainer = Trainer(algo, env=args.env, config=config, seed=seed, device="cpu",
                      log_dir=log_root / f"{algo}-{seed}", cache_dir=args.cache_dir, progress=False)
    metrics = trainer.train(evaluate=False)
    row = {"algorithm": algo, "seed": seed, "steps": int(metrics["step"]),
           "train_time_s": metrics["train_time_s"], "final_loss": metrics["loss"],
           "expert_return": metrics.get("expert/return_mean"), "config": {**trainer.config.to_dict(), **trainer.training.to_dict()}}
    if algo == "diffusion":
        policy = trainer.eval_policy
        variants = {"ddpm_all": ("DDPM", trainer.config.num_train_timesteps), "ddim_10": ("DDIM", 10)}
        for name, (kind, steps) in variants.items():
            policy.configure_inference(kind, steps)
            t0 = time.perf_counter()
            summary = trainer.evaluate(args.episodes, 10, seed=0)
            row[name] = {"return_mean": summary["eval/return_mean"], "return_std": summary["eval/return_std"],
                         "returns": trainer.last_eval.returns.tolist(), "eval_time_s": time.perf_counter() - t0}
    else:
        summary = trainer.evaluate(args.episodes, 10, seed=0)
        row["eval"] = {"return_mean": summary["eval/return_mean"], "return_std": summary["eval/return_std"],
                       "returns": trainer.last_eval.returns.tolist()}
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="Pendulum-v1", help="an env with a built-in SB3 expert")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds")
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes (seeds 0..N-1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--cache-dir", default=None, help="expert/demo cache (default: the user cache)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (smoke test)")
    parser.add_argument("--out", default=None, help="result file (default results/<env>.json)")
    args = parser.parse_args(argv)
    if args.out is None:
        name = "pendulum" if args.env == "Pendulum-v1" else re.sub(r"[^a-z0-9]+", "_", args.env.lower())
        args.out = str(RESULTS / f"{name}.json")
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for algo in ("bc", "diffusion"):
                row = _run(algo, seed, args, Path(tmp))
                rows.append(row)
                print(f"seed {seed} {algo:9s} done in {row['train_time_s']:.0f} s", flush=True)

    expert = rows[0]["expert_return"]

    def agg(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}

    summary = {
        "expert_return_mean": expert,
        "bc": agg([r["eval"]["return_mean"] for r in rows if r["algorithm"] == "bc"]),
        "diffusion_ddpm_all": agg([r["ddpm_all"]["return_mean"] for r in rows if r["algorithm"] == "diffusion"]),
        "diffusion_ddim_10": agg([r["ddim_10"]["return_mean"] for r in rows if r["algorithm"] == "diffusion"]),
        "bc_train_time_s": agg([r["train_time_s"] for r in rows if r["algorithm"] == "bc"]),
        "diffusion_train_time_s": agg([r["train_time_s"] for r in rows if r["algorithm"] == "diffusion"]),
    }
    for key in ("bc", "diffusion_ddpm_all", "diffusion_ddim_10"):
        # within 25 % of the expert: return >= expert - 0.25 |expert| (Pendulum's are negative)
        summary[key]["within_25pct_of_expert"] = summary[key]["mean"] >= expert - 0.25 * abs(expert)
    result = {"benchmark": "pendulum", "env": args.env, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "threads": args.threads, "machine": platform.machine(), "quick": args.quick,
              "episodes": args.episodes, "seeds": args.seeds,
              "cache_dir": str(args.cache_dir or default_cache_dir()), "summary": summary, "runs": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\n{args.env}, {args.seeds} training seeds x {args.episodes} evaluation episodes "
          f"(expert return {expert:.1f})")
    print(f"{'policy':22s} {'return (mean ± std over seeds)':>32s}  {'train s':>8s}")
    for key, label, t in [("bc", "BC-MLP", "bc_train_time_s"),
                          ("diffusion_ddpm_all", "Diffusion, DDPM all", "diffusion_train_time_s"),
                          ("diffusion_ddim_10", "Diffusion, DDIM 10", "diffusion_train_time_s")]:
        s = summary[key]
        print(f"{label:22s} {s['mean']:>20.1f} ± {s['std']:<9.1f} {summary[t]['mean']:>8.0f}")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
