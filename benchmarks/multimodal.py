"""Multimodality showcase: Diffusion Policy vs BC on rlox_dp/BimodalPoint-v0.

The scripted expert passes the diamond obstacle on the left or on the right (50/50 per episode);
up to the split point below the obstacle both sides act identically. Regression (BC-MLP, BC-chunk)
learns the average of the two sides there and steers into the obstacle's corner; Diffusion Policy
samples a chunk from one side, and once the point is off the axis its observations keep it there.

For each training seed, every variant below is trained on THE SAME demonstrations (one expert
collection: ``--n-demos`` episodes from demo seed 10,000) and evaluated on the same held-out
episode seeds ``0 .. --episodes - 1``. Writes ``<out>/multimodal.json`` (per-seed numbers, configs,
settings, torch version, threads, date) and ``<out>/multimodal.png`` (demonstrations, rollouts of the
baseline with the best mean success, diffusion rollouts), and prints a table.

    python benchmarks/multimodal.py                      # 3 seeds, full budgets (~7 min on 2 busy cores)
    python benchmarks/multimodal.py --quick --seeds 1    # smoke setting (seconds)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rlox_dp import Trainer
from rlox_dp.buffers import Demonstrations
from rlox_dp.envs import BIMODAL_ENV_ID
from rlox_dp.envs.bimodal import GOAL
from rlox_dp.evaluation import rollout
from rlox_dp.experts import default_demonstrations, get_expert

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plotting import pyplot  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEMO_SEED = 10_000  # demonstration episode seeds DEMO_SEED.. (disjoint from evaluation seeds 0..)
EVAL_SEED = 0
EVAL_ENVS = 10

#: variant -> (registered algorithm, config overrides). Budgets keep each run under ~2 min on
#: one CPU thread; BC-MLP is run with one and with two observations (its history can break ties).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "bc_obs1": ("bc", {"n_obs_steps": 1, "batch_size": 64, "total_steps": 3000}),
    "bc_obs2": ("bc", {"n_obs_steps": 2, "batch_size": 64, "total_steps": 3000}),
    "bc_chunk": ("bc_chunk", {"n_obs_steps": 2, "horizon": 8, "n_action_steps": 4,
                              "batch_size": 64, "total_steps": 3000}),
    "diffusion": ("diffusion", {"denoiser": "mlp", "hidden_dim": 256, "n_layers": 4,
                                "n_obs_steps": 2, "horizon": 8, "n_action_steps": 4,
                                "prediction_type": "sample", "num_train_timesteps": 100,
                                "noise_scheduler_type": "DDPM", "batch_size": 64, "lr": 1e-3,
                                "total_steps": 3000}),
}
LABELS = {"bc_obs1": "BC-MLP (T_o=1)", "bc_obs2": "BC-MLP (T_o=2)", "bc_chunk": "BC-chunk (H=8)",
          "diffusion": "Diffusion Policy"}
#: tiny networks and budgets for --quick (the smoke test): checks the pipeline, not the numbers.
QUICK = {"bc": {"hidden_dim": 32, "n_layers": 2, "total_steps": 20, "lr_warmup_steps": 2},
         "bc_chunk": {"hidden_dim": 32, "n_layers": 2, "total_steps": 20, "lr_warmup_steps": 2},
         "diffusion": {"hidden_dim": 32, "n_layers": 1, "num_train_timesteps": 10,
                       "total_steps": 20, "lr_warmup_steps": 2}}


def variant_config(variant: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(algorithm, config dict)`` of ``variant`` under the command-line budget options."""
    algorithm, overrides = VARIANTS[variant]
    config = {**overrides, "n_demos": args.n_demos, "n_eval_episodes": args.episodes,
              "n_eval_envs": EVAL_ENVS, "eval_seed": EVAL_SEED, "log_every": 100,
              "checkpoint_every": 10**9}
    if args.quick:
        config.update(QUICK[algorithm])
    if args.steps is not None:
        config["total_steps"] = args.steps
    return algorithm, config


def episode_side(positions: np.ndarray) -> int:
    """Side on which a trajectory ``(T, 2)`` passed: sign of x where ``|x|`` is largest (0 if never off-axis)."""
    return int(np.sign(positions[np.argmax(np.abs(positions[:, 0])), 0]))


def demo_trajectories(demos: Demonstrations) -> list[np.ndarray]:
    """Positions ``(T_e, 2)`` of each demonstration episode."""
    starts = np.concatenate([[0], demos.episode_ends[:-1]])
    return [demos.observations["state"][s:e] for s, e in zip(starts, demos.episode_ends, strict=True)]


def _numeric_attributes(obj: Any) -> dict[str, Any]:
    """Public int/float/array attributes of ``obj`` as JSON-able values."""
    return {k: np.asarray(v).tolist() for k, v in vars(obj).items()
            if not k.startswith("_") and isinstance(v, (int, float, np.ndarray))}


def env_parameters() -> dict[str, Any]:
    """The benchmarked env's and expert's numeric settings, to pin what was measured."""
    env = gym.make(BIMODAL_ENV_ID).unwrapped
    params = {"env": _numeric_attributes(env),
              "expert": _numeric_attributes(get_expert(BIMODAL_ENV_ID, progress=False, seed=0))}
    env.close()
    return params


def agg(values: list[float]) -> dict[str, float]:
    """Mean and population std over seeds."""
    return {"mean": statistics.fmean(values),
            "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def train_and_evaluate(variant: str, seed: int, demos: Demonstrations, args: argparse.Namespace,
                       log_root: Path) -> tuple[dict[str, Any], Trainer]:
    """Train ``variant`` with ``seed`` on ``demos``; evaluate on episode seeds ``0..episodes-1``."""
    algorithm, config = variant_config(variant, args)
    trainer = Trainer(algorithm, env=BIMODAL_ENV_ID, config=config, demos=demos, seed=seed,
                      device="cpu", log_dir=log_root / f"{variant}-{seed}", progress=False,
                      preset=False)
    metrics = trainer.train(evaluate=False)
    t0 = time.perf_counter()
    summary = trainer.evaluate(args.episodes, EVAL_ENVS, seed=EVAL_SEED)
    eval_time = time.perf_counter() - t0
    result = trainer.last_eval
    returns = result.returns
    row = {"variant": variant, "algorithm": algorithm, "seed": seed, "steps": int(metrics["step"]),
           "train_time_s": metrics["train_time_s"], "final_loss": metrics["loss"],
           "eval_time_s": eval_time, "success_rate": summary["eval/success_rate"],
           # reward is -1 only on a collision (which ends the episode), +1 only on success
           "collision_rate": float(np.mean(returns < 0)),
           "timeout_rate": float(np.mean(returns == 0)),
           "return_mean": summary["eval/return_mean"], "length_mean": summary["eval/length_mean"],
           "successes": result.successes.astype(int).tolist(), "returns": returns.tolist(),
           "config": {**trainer.config.to_dict(), **trainer.training.to_dict()}}
    return row, trainer


def record_rollouts(trainer: Trainer, n_episodes: int) -> list[dict[str, Any]]:
    """Positions and outcome of ``n_episodes`` recorded evaluation episodes (seeds 0..n-1)."""
    policy = trainer.eval_policy
    policy.eval()
    policy.reset()
    seeds = list(range(EVAL_SEED, EVAL_SEED + n_episodes))
    episodes = rollout(policy, BIMODAL_ENV_ID, seeds, n_envs=EVAL_ENVS, record=True).episodes
    policy.reset()
    # observations are the positions before each action; a collision leaves the point in place
    return [{"positions": e.observations["state"],
             "outcome": "success" if e.success else ("collision" if e.episode_return < 0 else "timeout")}
            for e in episodes]


def plot(path: Path, demos: Demonstrations, panels: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Demonstrations (coloured by side), then one panel per ``(title, rollouts)`` by outcome."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Polygon

    env = gym.make(BIMODAL_ENV_ID).unwrapped
    size, goal_radius = env.obstacle_size, env.goal_radius
    env.close()
    colors = {"left": "tab:blue", "right": "tab:purple", "success": "tab:green",
              "collision": "tab:red", "timeout": "tab:orange"}
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(5 * (1 + len(panels)), 5.4))
    demo_paths = demo_trajectories(demos)
    all_panels = [(f"Demonstrations ({len(demo_paths)} episodes)",
                   [{"positions": p, "outcome": "left" if episode_side(p) < 0 else "right"}
                    for p in demo_paths]), *panels]
    for ax, (title, trajectories) in zip(axes, all_panels, strict=True):
        ax.add_patch(Polygon([(size, 0), (0, size), (-size, 0), (0, -size)], closed=True,
                             color="0.55", zorder=1))
        ax.add_patch(Circle(tuple(GOAL), goal_radius, color="tab:green", alpha=0.35, zorder=1))
        for traj in trajectories:
            p = traj["positions"]
            ax.plot(p[:, 0], p[:, 1], color=colors[traj["outcome"]], lw=1.0, alpha=0.6, zorder=2)
            ax.plot(p[0, 0], p[0, 1], "o", color="k", ms=2, zorder=3)
            if traj["outcome"] == "collision":
                ax.plot(p[-1, 0], p[-1, 1], "x", color="tab:red", ms=6, zorder=3)
        counts = {k: sum(t["outcome"] == k for t in trajectories) for k in colors}
        shown = [k for k in colors if counts[k]]
        ax.legend(handles=[Line2D([], [], color=colors[k], label=f"{k} ({counts[k]})") for k in shown],
                  loc="lower right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.2, 1.2)
        ax.set_aspect("equal")
        ax.grid(alpha=0.2)
    fig.suptitle("BimodalPoint-v0: pass the obstacle on either side to reach the goal (green disc)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options, with the --quick defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=None, help="training seeds (default 3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None,
                        help="gradient steps of every variant (default: per-variant budgets)")
    parser.add_argument("--episodes", type=int, default=None,
                        help="evaluation episodes, seeds 0..N-1 (default 50; 4 with --quick)")
    parser.add_argument("--n-demos", type=int, default=None, help="expert episodes (default 100; 10 with --quick)")
    parser.add_argument("--plot-episodes", type=int, default=None,
                        help="recorded rollouts per plot panel (default: --episodes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids spin-waits on busy CPUs)")
    parser.add_argument("--cache-dir", default=None, help="demo cache (default: a temporary directory)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets (smoke test)")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    args.episodes = args.episodes if args.episodes is not None else (4 if args.quick else 50)
    args.n_demos = args.n_demos if args.n_demos is not None else (10 if args.quick else 100)
    args.plot_episodes = args.plot_episodes if args.plot_episodes is not None else args.episodes
    for name in ("seeds", "episodes", "n_demos", "plot_episodes", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps: expected a positive int, got {args.steps}")
    return args


def print_table(result: dict[str, Any]) -> None:
    """Success rate (mean ± std over seeds), collision rate, return and train time per variant."""
    demos = result["demos"]
    print(f"\n{result['env']}: {len(result['seeds'])} training seed(s) x {result['episodes']} evaluation "
          f"episodes, {demos['n_episodes']} demos ({demos['left']} left / {demos['right']} right), "
          f"{result['threads']} torch thread(s)")
    print(f"{'algorithm':20s} {'success (mean ± std)':>22s} {'collision':>10s} {'return':>8s} {'train s':>8s}")
    for s in result["summary"].values():
        print(f"{s['label']:20s} {s['success_rate']['mean']:>13.2f} ± {s['success_rate']['std']:<6.2f} "
              f"{s['collision_rate']['mean']:>10.2f} {s['return_mean']['mean']:>8.2f} "
              f"{s['train_time_s']['mean']:>8.1f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able result that is also written to ``--out``."""
    args = parse_args(argv)
    pyplot()  # fail now, not after training, if matplotlib (the bench extra) is missing
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rlox_dp_multimodal_") as tmp:
        cache = Path(args.cache_dir) if args.cache_dir else Path(tmp) / "cache"
        demos = default_demonstrations(BIMODAL_ENV_ID, n_episodes=args.n_demos, seed=DEMO_SEED,
                                       cache_dir=cache, progress=False)
        first: dict[str, Trainer] = {}  # seed-0 trainers, for the plot
        for seed in range(args.seeds):
            for variant in VARIANTS:
                row, trainer = train_and_evaluate(variant, seed, demos, args, Path(tmp) / "runs")
                rows.append(row)
                if seed == 0:
                    first[variant] = trainer
                print(f"seed {seed} {LABELS[variant]:18s} success {row['success_rate']:.2f}  "
                      f"train {row['train_time_s']:.0f} s", flush=True)
        summary = {v: {"label": LABELS[v], **{
            k: agg([r[k] for r in rows if r["variant"] == v])
            for k in ("success_rate", "collision_rate", "timeout_rate", "return_mean",
                      "train_time_s", "eval_time_s")}} for v in VARIANTS}
        # the strongest baseline over seeds is the one plotted (ties: the first listed)
        baselines = [v for v in VARIANTS if VARIANTS[v][0] != "diffusion"]
        best_baseline = max(baselines, key=lambda v: summary[v]["success_rate"]["mean"])
        recorded = {v: record_rollouts(first[v], args.plot_episodes) for v in (best_baseline, "diffusion")}
    plotted_sides = {v: {"left": sum(episode_side(t["positions"]) < 0 for t in trajs if t["outcome"] == "success"),
                         "right": sum(episode_side(t["positions"]) > 0 for t in trajs if t["outcome"] == "success")}
                     for v, trajs in recorded.items()}
    png = out / "multimodal.png"
    plot(png, demos, [(f"{LABELS[v]}, seed 0: {len(trajs)} rollouts\n(successes: "
                       f"{plotted_sides[v]['left']} left, {plotted_sides[v]['right']} right)", trajs)
                      for v, trajs in recorded.items()])
    sides = [episode_side(p) for p in demo_trajectories(demos)]
    result = {
        "benchmark": "multimodal", "env": BIMODAL_ENV_ID, "env_params": env_parameters(),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": args.threads,
        "machine": platform.machine(), "python": platform.python_version(), "device": "cpu",
        "quick": args.quick, "seeds": list(range(args.seeds)), "episodes": args.episodes,
        "eval_seeds": [EVAL_SEED, EVAL_SEED + args.episodes - 1],
        "demos": {"n_episodes": args.n_demos, "seed": DEMO_SEED, "n_steps": int(demos.n_steps),
                  "left": sides.count(-1), "right": sides.count(1),
                  "expert_success_rate": demos.metadata.get("success_rate"),
                  "expert_return_mean": demos.metadata.get("return_mean")},
        "settings": {v: {"algorithm": a, "label": LABELS[v], "overrides": variant_config(v, args)[1]}
                     for v, (a, _) in VARIANTS.items()},
        "summary": summary,
        "plot": {"file": png.name, "baseline_variant": best_baseline,
                 "rollouts_per_panel": args.plot_episodes, "successful_rollout_sides": plotted_sides},
        "runs": rows,
    }
    (out / "multimodal.json").write_text(json.dumps(result, indent=2))
    print_table(result)
    print(f"wrote {out / 'multimodal.json'} and {png}")
    return result


if __name__ == "__main__":
    main()
