"""PushT MPC expert: success rate, time per episode on one core and action smoothness.

Solves the PushT episodes reset with seeds ``--seed .. --seed + n - 1`` (default from 10,000,
the demonstration seeds) with :func:`rlox_dp.experts.pusht.solve_episode` in this one
process (Python, numpy and pymunk; no torch), and measures:

- success rate (coverage > 0.95 within ``--max-steps`` steps; target >= 90 %),
- wall-clock and CPU seconds per episode (target <= 60 s on one core),
- mean |a_t - a_{t-1}| in px over all consecutive action pairs of all episodes (target <= 15 px);
  with ``RLOX_DP_PUSHT_ZARR`` set, the same statistic of the human demonstrations.

Writes ``benchmarks/results/pusht_expert.json`` and prints a summary.

    python benchmarks/pusht_expert.py            # 50 episodes (~5-10 min on an idle core)
    python benchmarks/pusht_expert.py --n 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from rlox_dp.experts.pusht import PushTMPCConfig, solve_episode

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {
    "success_rate_min": 0.9,
    "seconds_per_episode_max": 60.0,
    "mean_abs_action_step_max": 15.0,
}


def action_steps(actions: np.ndarray, episode_ends: np.ndarray) -> np.ndarray:
    """|a_t - a_{t-1}| ``(sum_e (L_e - 1),)`` within each episode of ``actions`` ``(N, 2)``."""
    starts = np.concatenate([[0], episode_ends[:-1]])
    return np.concatenate(
        [
            np.linalg.norm(np.diff(actions[s:e], axis=0), axis=1)
            for s, e in zip(starts, episode_ends, strict=True)
        ]
    )


def _step_stats(steps: np.ndarray) -> dict[str, float]:
    return {
        "mean": float(steps.mean()),
        "median": float(np.median(steps)),
        "p95": float(np.percentile(steps, 95)),
        "max": float(steps.max()),
    }


def _human_stats() -> dict | None:
    """Action-step statistics of the human PushT demonstrations at ``$RLOX_DP_PUSHT_ZARR``."""
    path = os.environ.get("RLOX_DP_PUSHT_ZARR")
    if not path or not Path(path).exists():
        return None
    import zarr

    root = zarr.open_group(path, mode="r")
    actions, ends = root["data/action"][:].astype(np.float64), root["meta/episode_ends"][:]
    lengths = np.diff(np.concatenate([[0], ends]))
    return {
        "store": Path(path).name,
        "n_episodes": int(len(ends)),
        "episode_length_mean": float(lengths.mean()),
        "action_step_px": _step_stats(action_steps(actions, ends)),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, default=50, help="episodes (seeds --seed .. --seed + n - 1)"
    )
    parser.add_argument("--seed", type=int, default=10_000, help="first reset seed")
    parser.add_argument("--max-steps", type=int, default=300, help="step budget per episode")
    parser.add_argument("--out", default=str(RESULTS / "pusht_expert.json"))
    args = parser.parse_args(argv)
    config = PushTMPCConfig()
    rows, actions, ends = [], [], []
    for seed in range(args.seed, args.seed + args.n):
        cpu = time.process_time()
        result = solve_episode(seed, max_steps=args.max_steps, config=config)
        cpu = time.process_time() - cpu
        steps = np.linalg.norm(np.diff(result["actions"], axis=0), axis=1)
        rows.append(
            {
                "seed": seed,
                "success": result["success"],
                "length": len(result["actions"]),
                "wall_time_s": result["wall_time_s"],
                "cpu_time_s": cpu,
                "final_coverage": float(result["coverage"][-1]),
                "max_coverage": float(result["coverage"].max()),
                "mean_action_step_px": float(steps.mean()) if len(steps) else 0.0,
            }
        )
        actions.append(result["actions"].astype(np.float64))
        ends.append(sum(len(a) for a in actions))
        print(
            f"seed {seed}: success={result['success']!s:5s} steps={len(result['actions']):3d} "
            f"wall={result['wall_time_s']:5.1f} s cpu={cpu:5.1f} s "
            f"coverage={result['coverage'].max():.3f} |da|={rows[-1]['mean_action_step_px']:.1f} px",
            flush=True,
        )
    step_stats = _step_stats(action_steps(np.concatenate(actions), np.array(ends)))
    wall = np.array([r["wall_time_s"] for r in rows])
    cpu = np.array([r["cpu_time_s"] for r in rows])
    success = np.array([r["success"] for r in rows])
    summary = {
        "n_episodes": args.n,
        "success_rate": float(success.mean()),
        "wall_time_s_per_episode": float(wall.mean()),
        "cpu_time_s_per_episode": float(cpu.mean()),
        "wall_time_s_per_episode_max": float(wall.max()),
        "episode_length_mean": float(np.mean([r["length"] for r in rows])),
        "episode_length_mean_successful": float(
            np.mean([r["length"] for r in rows if r["success"]])
        )
        if success.any()
        else None,
        "action_step_px": step_stats,
    }
    summary["meets_targets"] = {
        "success_rate": summary["success_rate"] >= TARGETS["success_rate_min"],
        "seconds_per_episode": summary["cpu_time_s_per_episode"]
        <= TARGETS["seconds_per_episode_max"],
        "mean_abs_action_step": step_stats["mean"] <= TARGETS["mean_abs_action_step_max"],
    }
    human = _human_stats()
    result = {
        "benchmark": "pusht_expert",
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.machine(),
        "processes": 1,
        "cpu_count": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "seeds": [args.seed, args.seed + args.n - 1],
        "max_steps": args.max_steps,
        "config": dataclasses.asdict(config),
        "targets": TARGETS,
        "summary": summary,
        "human": human,
        "episodes": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(
        f"\nPushT MPC expert, {args.n} episodes (seeds {args.seed}..{args.seed + args.n - 1}), one process"
    )
    print(f"success rate          {summary['success_rate']:.1%}  (target >= 90 %)")
    print(
        f"time per episode      {summary['cpu_time_s_per_episode']:.1f} s CPU, "
        f"{summary['wall_time_s_per_episode']:.1f} s wall  (target <= 60 s)"
    )
    print(
        f"mean |a_t - a_t-1|    {step_stats['mean']:.1f} px  (target <= 15 px)"
        + (f"; human demos {human['action_step_px']['mean']:.1f} px" if human else "")
    )
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
