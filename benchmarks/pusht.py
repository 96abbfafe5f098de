"""PushT from the real human demonstrations: Diffusion Policy vs BC, the paper's evaluation.

Every variant is trained on THE SAME human demonstrations (``pusht_cchi_v7_replay.zarr``: 206
episodes, 25,650 steps) with the same observation mode and the same budget of gradient steps,
for each training seed, and evaluated with the paper's protocol on the same 50 held-out initial
states (reset seeds ``--eval-seed ..``; the human data has no seeds, training never touches the
env): 300-step episodes, per-episode score ``max_t clip(coverage_t / 0.95, 0, 1)``, success =
coverage reached 0.95. Reported per variant: mean score and success rate with 95 % intervals
(score: t interval over episodes; success: Wilson interval), both pooled over all seeds' episodes,
plus the per-seed means, train time and steps. Writes ``<out>/pusht_<obs>.json`` and
``<out>/pusht_<obs>.png`` and prints a table. With ``--eval-every N`` each run is also evaluated
every N steps (the learning curves go to the JSON and the plot).

The dataset is never looked up at a fixed path: ``--demos PATH`` or ``$RLOX_DP_PUSHT_ZARR``.

    python benchmarks/pusht.py --demos pusht_cchi_v7_replay.zarr   # 4 variants x 15k steps: ~75 min/seed, 1 thread
    python benchmarks/pusht.py --obs image --device cuda                       # image policies on a GPU
    python benchmarks/pusht.py --quick --obs image --episodes 2                # CPU smoke run (seconds)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlox_dp import Trainer
from rlox_dp.envs.pusht import PUSHT_ENV_ID, load_pusht_demonstrations
from rlox_dp.training import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import mean_interval, wilson_interval  # noqa: E402
from plotting import pyplot  # noqa: E402
from pusht_variants import DEFAULT_STEPS, EVAL_ENVS, LABELS, QUICK_STEPS, variant_config  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
class _CurveCallback(Callback):
    """Hands every evaluation logged during training to ``on_eval(trainer, summary)``."""

    def __init__(self, on_eval: Any) -> None:
        self.on_eval = on_eval

    def on_evaluation(self, trainer: Trainer, summary: dict[str, float]) -> None:
        """Pass the summary on."""
        self.on_eval(trainer, summary)


def measure_data_time(buffer: Any, batch_size: int, n_batches: int = 20) -> float:
    """Seconds per batch of :meth:`DemonstrationBuffer.sample` (indexing, gathering, image scaling)."""
    buffer.sample(batch_size)
    start = time.perf_counter()
    for _ in range(n_batches):
        buffer.sample(batch_size)
    return (time.perf_counter() - start) / n_batches


def train_and_evaluate(variant: str, seed: int, args: argparse.Namespace, log_root: Path,
                       demos: Any, previous: dict[str, Any] | None = None,
                       on_progress: Any = None) -> dict[str, Any]:
    """Train ``variant`` with ``seed`` for ``args.steps`` steps; evaluate on the held-out seeds.

    ``on_progress(row)`` receives the (incomplete) result row after every in-loop evaluation, so
    that a killed run keeps its learning curve. With ``args.resume``, a run whose checkpoint
    ``log_root/<variant>-<seed>/checkpoints/last.safetensors`` exists continues from it, its curve
    (and training time) carried over from ``previous``, the row of the earlier result file.
    """
    algorithm, config = variant_config(variant, args)
    run_dir = log_root / f"{variant}-{seed}"
    last = run_dir / "checkpoints" / "last.safetensors"
    if args.resume and last.exists():
        trainer = Trainer.load(last, demos=demos, device=args.device, log_dir=run_dir, progress=args.progress)
        print(f"  resuming {variant} seed {seed} at step {trainer.state.step}", flush=True)
    else:
        trainer = Trainer(algorithm, env=PUSHT_ENV_ID, config=config, demos=demos, seed=seed,
                          device=args.device, log_dir=run_dir, progress=args.progress, preset=False)
    earlier_curve = [c for c in (previous or {}).get("curve", []) if c["step"] <= trainer.state.step]
    earlier_time = float((previous or {}).get("train_time_s", 0.0)) if earlier_curve else 0.0
    data_time = measure_data_time(trainer.buffer, trainer.training.batch_size)
    best = {"score": max((c["score"] for c in earlier_curve), default=-1.0)}
    start_time = time.perf_counter()

    points = list(earlier_curve)  # the learning curve: one point per logged evaluation

    def row(train_time: float, complete: bool) -> dict[str, Any]:
        result = trainer.last_eval
        steps_done = int(trainer.state.step)
        return {"variant": variant, "algorithm": algorithm, "seed": seed, "steps": steps_done,
                "steps_planned": args.steps, "complete": complete, "train_time_s": train_time,
                "step_time_s": train_time / max(steps_done, 1), "data_time_per_batch_s": data_time,
                "data_fraction_of_step": data_time / max(train_time / max(steps_done, 1), 1e-9),
                "score": float(np.mean(result.scores)), "success_rate": float(np.mean(result.successes)),
                "scores": result.scores.tolist(), "successes": result.successes.astype(int).tolist(),
                "curve": list(points), "n_parameters": sum(p.numel() for p in trainer.policy.parameters()),
                "config": {**trainer.config.to_dict(), **trainer.training.to_dict()}}

    def on_eval(tr: Trainer, summary: dict[str, float]) -> None:
        points.append({"step": int(tr.state.step), "score": summary["eval/score_mean"],
                       "success_rate": summary["eval/success_rate"],
                       "episodes": int(summary["eval/n_episodes"]), "eval_time_s": summary["eval/time_s"]})
        if args.run_dir and summary["eval/score_mean"] > best["score"]:
            best["score"] = summary["eval/score_mean"]
            tr.save(run_dir / "best.safetensors")
        if on_progress is not None:
            in_loop_eval = sum(e["eval/time_s"] for e in tr.eval_history)
            on_progress(row(earlier_time + time.perf_counter() - start_time - in_loop_eval, False))

    # One training run (the cosine learning-rate schedule spans all steps); with --eval-every the
    # trainer also evaluates on the held-out seeds every N steps (excluded from train_time_s).
    metrics = trainer.train(args.steps, evaluate=False, callbacks=[_CurveCallback(on_eval)])
    train_time = earlier_time + metrics["train_time_s"]
    summary = trainer.log_evaluation(trainer.evaluate(args.episodes, min(EVAL_ENVS, args.episodes),
                                                      seed=args.eval_seed))
    on_eval(trainer, summary)
    if args.keep_checkpoints:
        Path(args.keep_checkpoints).mkdir(parents=True, exist_ok=True)
        trainer.save(Path(args.keep_checkpoints) / f"{variant}-{seed}.safetensors")
    final = row(train_time, True)
    final.update(final_loss=metrics["loss"], eval_time_s=summary["eval/time_s"],
                 eval_env_steps_per_s=summary["eval/env_steps_per_s"])
    if args.videos:  # the best checkpoint's rollouts (the final one's without --run-dir)
        best_path = run_dir / "best.safetensors"
        viewer = Trainer.load(best_path, device=args.device, progress=args.progress) if (
            args.run_dir and best_path.exists()) else trainer
        viewer.evaluate(args.videos, min(EVAL_ENVS, args.videos), seed=args.eval_seed,
                        video_dir=Path(args.out) / "pusht_videos" / f"{variant}-{seed}", n_videos=args.videos)
        final["video_checkpoint_step"] = int(viewer.state.step)
    print(f"  {LABELS[variant]} seed {seed}: score {summary['eval/score_mean']:.3f} success "
          f"{summary['eval/success_rate']:.2f} ({train_time / 60:.1f} min training, {trainer.state.step} "
          f"steps; curve {[round(c['score'], 3) for c in final['curve']]})", flush=True)
    return final


def summarize(rows: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    """Per variant: pooled score / success intervals over all seeds' episodes, per-seed stats."""
    summary = {}
    for v in variants:
        runs = [r for r in rows if r["variant"] == v]
        scores = np.concatenate([r["scores"] for r in runs])
        successes = np.concatenate([r["successes"] for r in runs]).astype(int)
        per_seed_score = [r["score"] for r in runs]
        summary[v] = {
            "label": LABELS[v], "seeds": len(runs), "episodes": int(len(scores)),
            "score": mean_interval(scores),
            "success_rate": wilson_interval(int(successes.sum()), len(successes)),
            "score_per_seed": per_seed_score,
            "score_seed_std": statistics.pstdev(per_seed_score) if len(runs) > 1 else 0.0,
            "success_per_seed": [r["success_rate"] for r in runs],
            "train_time_s": statistics.fmean(r["train_time_s"] for r in runs),
            "steps": runs[0]["steps"], "n_parameters": runs[0]["n_parameters"],
        }
    return summary


def plot(path: Path, result: dict[str, Any]) -> None:
    """Left: score and success (95 % intervals, seeds as dots); right: learning curves if any."""
    plt = pyplot()

    summary, runs = result["summary"], result["runs"]
    has_curves = any(len(r["curve"]) > 1 for r in runs)
    fig, axes = plt.subplots(1, 2 if has_curves else 1, figsize=(12 if has_curves else 6.5, 4.5),
                             squeeze=False)
    ax = axes[0, 0]
    names = list(summary)
    x = np.arange(len(names))
    for offset, key, color in ((-0.18, "score", "tab:blue"), (0.18, "success_rate", "tab:orange")):
        means = np.array([summary[v][key]["mean"] for v in names])
        lows = means - np.array([summary[v][key]["low"] for v in names])
        highs = np.array([summary[v][key]["high"] for v in names]) - means
        ax.bar(x + offset, means, 0.34, yerr=[lows, highs], capsize=4, color=color,
               label="score" if key == "score" else "success rate (coverage ≥ 0.95)")
        per_seed = "score_per_seed" if key == "score" else "success_per_seed"
        for i, v in enumerate(names):
            ax.plot(np.full(len(summary[v][per_seed]), x[i] + offset), summary[v][per_seed], "k.", ms=4)
    ax.set_xticks(x, [summary[v]["label"].replace(" (", "\n(").replace("U-Net ", "U-Net\n") for v in names],
                  fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"PushT ({result['obs']}), {result['steps']} steps, {len(result['seeds'])} seed(s) x "
                 f"{result['episodes']} held-out episodes", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    if has_curves:
        ax = axes[0, 1]
        colors = {"diffusion": "tab:green", "diffusion_small": "tab:cyan", "diffusion_mlp": "tab:olive", "bc": "tab:red",
                  "bc_chunk": "tab:purple", "diffusion_transformer": "tab:orange"}
        for r in runs:
            steps = [c["step"] for c in r["curve"]]
            ax.plot(steps, [c["score"] for c in r["curve"]], "o-", color=colors.get(r["variant"]),
                    alpha=0.7, label=LABELS[r["variant"]] if r["seed"] == min(result["seeds"]) else None)
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("score (mean over held-out episodes)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title("learning curves", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options with defaults filled in."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", default=os.environ.get("RLOX_DP_PUSHT_ZARR"),
                        help="pusht_cchi_v7_replay.zarr (default $RLOX_DP_PUSHT_ZARR)")
    parser.add_argument("--obs", choices=["keypoints", "state", "image"], default="keypoints")
    parser.add_argument("--variants", default="diffusion,diffusion_small,bc,bc_chunk",
                        help=f"comma-separated subset of {list(LABELS)}")
    parser.add_argument("--seeds", type=int, default=None, help="training seeds 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--first-seed", type=int, default=0, help="first training seed")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"gradient steps of every variant (default {DEFAULT_STEPS}; {QUICK_STEPS} with --quick)")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes")
    parser.add_argument("--eval-seed", type=int, default=0, help="first held-out reset seed")
    parser.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps (0: only at the end)")
    parser.add_argument("--curve-episodes", type=int, default=0,
                        help="episodes of the in-loop (learning-curve) evaluations with --obs image "
                             "(default: --episodes); the final evaluation always uses --episodes")
    parser.add_argument("--vision-backbone", choices=["compact", "resnet18"], default="compact",
                        help="image encoder of every variant with --obs image")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="keep each run's checkpoints in DIR/<variant>-<seed>/ (last one every "
                             "--eval-every steps, best.safetensors at the best evaluation) instead of "
                             "a temporary directory; needed by --resume")
    parser.add_argument("--resume", action="store_true",
                        help="continue the runs of --run-dir from their last checkpoints, their curves "
                             "taken from the existing result file; completed runs are kept")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto ...")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids spin-waits on busy CPUs)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets (smoke test)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument("--videos", type=int, default=0,
                        help="also write mp4s of the first N held-out episodes of each run "
                             "(<out>/pusht_videos/<variant>-<seed>/)")
    parser.add_argument("--keep-checkpoints", default=None, metavar="DIR",
                        help="copy each run's final checkpoint to DIR/<variant>-<seed>.safetensors")
    parser.add_argument("--tag", default="", help="suffix of the result file names (pusht_<obs><tag>.json)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="no training: merge the runs of these result files (e.g. seeds run in "
                             "parallel processes with different --tag) into pusht_<obs><tag>.json")
    args = parser.parse_args(argv)
    if args.merge:
        return args
    if not args.demos or not Path(args.demos).exists():
        parser.error(f"--demos: the PushT zarr was not found (got {args.demos!r}); pass --demos PATH "
                     "or set RLOX_DP_PUSHT_ZARR")
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in LABELS]
    if unknown or not args.variants:
        parser.error(f"--variants: expected a subset of {list(LABELS)}, got {args.variants}")
    args.seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    args.steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else DEFAULT_STEPS[args.obs])
    if args.videos < 0:
        parser.error(f"--videos: expected an int >= 0, got {args.videos}")
    if args.resume and not args.run_dir:
        parser.error("--resume needs --run-dir (where the checkpoints of the runs are)")
    if args.curve_episodes < 0:
        parser.error(f"--curve-episodes: expected an int >= 0, got {args.curve_episodes}")
    for name in ("seeds", "steps", "episodes", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive int, got {getattr(args, name)}")
    if args.eval_every < 0:
        parser.error(f"--eval-every: expected an int >= 0, got {args.eval_every}")
    return args


def print_table(result: dict[str, Any]) -> None:
    """Score and success (95 % intervals), per-seed spread, train time per variant."""
    print(f"\nPushT ({result['obs']}), {result['steps']} gradient steps, {len(result['seeds'])} seed(s) "
          f"x {result['episodes']} held-out episodes (seeds {result['eval_seeds'][0]}.."
          f"{result['eval_seeds'][1]}), device {result['device']}, {result['threads']} thread(s)")
    print(f"{'policy':26s} {'score [95% CI]':>22s} {'success [95% CI]':>22s} {'seed std':>9s} {'train min':>10s}")
    for s in result["summary"].values():
        sc, su = s["score"], s["success_rate"]
        print(f"{s['label']:26s} {sc['mean']:>8.3f} [{sc['low']:.3f}, {sc['high']:.3f}] "
              f"{su['mean']:>8.2f} [{su['low']:.2f}, {su['high']:.2f}] {s['score_seed_std']:>9.3f} "
              f"{s['train_time_s'] / 60:>10.1f}")


def merge(files: list[str]) -> dict[str, Any]:
    """One result from several result files of the same protocol (their runs concatenated).

    Raises ValueError when the files differ in observation mode, steps, episodes or eval seeds,
    or when two files hold the same (variant, seed) run.
    """
    parts = [json.loads(Path(f).read_text()) for f in files]
    keys = ("obs", "steps", "episodes", "eval_seeds", "quick")
    for f, part in zip(files[1:], parts[1:], strict=True):
        differing = [k for k in keys if part[k] != parts[0][k]]
        if differing:
            raise ValueError(f"--merge: {f} differs from {files[0]} in {differing}; only runs of "
                             "the same protocol can be merged")
    rows = [r for part in parts for r in part["runs"]]
    seen = [(r["variant"], r["seed"]) for r in rows]
    duplicates = sorted({k for k in seen if seen.count(k) > 1})
    if duplicates:
        raise ValueError(f"--merge: runs (variant, seed) {duplicates} appear in more than one file")
    variants = [v for v in LABELS if any(r["variant"] == v for r in rows)]
    result = {**parts[0], "merged_from": [Path(f).name for f in files],
              "seeds": sorted({r["seed"] for r in rows}),
              "settings": {v: s for part in parts for v, s in part["settings"].items()},
              "summary": summarize(rows, variants), "runs": rows}
    return result


def write(result: dict[str, Any], out: Path, tag: str, quiet: bool = False) -> None:
    """``<out>/pusht_<obs><tag>.json`` and ``.png`` (written atomically), then the table."""
    stem = f"pusht_{result['obs']}{tag}"
    tmp = out / f".{stem}.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out / f"{stem}.json")
    plot(out / f"{stem}.png", result)
    if not quiet:
        print_table(result)
        print(f"wrote {out / f'{stem}.json'} and {out / f'{stem}.png'}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON-able result that is also written to ``--out``.

    The result file is rewritten after every evaluation (runs still training are marked
    ``"complete": false``, with the last evaluation as their score), so a killed benchmark keeps
    its learning curves; ``--resume`` continues it.
    """
    args = parse_args(argv)
    pyplot()  # fail now, not after training, if matplotlib (the bench extra) is missing
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge:
        result = merge(args.merge)
        write(result, out, args.tag)
        return result
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    demos = load_pusht_demonstrations(args.demos, obs_mode=args.obs)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    result_file = out / f"pusht_{args.obs}{args.tag}.json"
    earlier = {(r["variant"], r["seed"]): r for r in json.loads(result_file.read_text())["runs"]
               } if args.resume and result_file.exists() else {}
    rows: list[dict[str, Any]] = []
    result = {
        "benchmark": "pusht", "env": PUSHT_ENV_ID, "obs": args.obs, "demos": str(args.demos),
        "n_demo_episodes": int(len(demos.episode_ends)), "n_demo_steps": int(demos.n_steps),
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": args.threads,
        "machine": platform.machine(), "python": platform.python_version(),
        "device": args.device, "quick": args.quick, "seeds": seeds, "steps": args.steps,
        "episodes": args.episodes, "eval_seeds": [args.eval_seed, args.eval_seed + args.episodes - 1],
        "settings": {v: {"algorithm": variant_config(v, args)[0], "label": LABELS[v],
                         "overrides": variant_config(v, args)[1]} for v in args.variants},
    }

    def progress(row: dict[str, Any]) -> None:
        runs = rows + [row]
        variants = [v for v in args.variants if any(r["variant"] == v for r in runs)]
        write({**result, "summary": summarize(runs, variants), "runs": runs}, out, args.tag, quiet=True)

    with tempfile.TemporaryDirectory(prefix="rlox_dp_pusht_") as tmp:
        log_root = Path(args.run_dir) if args.run_dir else Path(tmp)
        for seed in seeds:
            for variant in args.variants:
                previous = earlier.get((variant, seed))
                if previous is not None and previous.get("complete", True) and previous["steps"] == args.steps:
                    rows.append(previous)  # finished before: kept as it is
                    continue
                rows.append(train_and_evaluate(variant, seed, args, log_root, demos, previous, progress))
    result.update(summary=summarize(rows, args.variants), runs=rows)
    write(result, out, args.tag)
    return result


if __name__ == "__main__":
    main()
