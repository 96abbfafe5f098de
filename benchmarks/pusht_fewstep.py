"""PushT keypoints side by side: DDPM-100 vs few-step DDIM / DPM-Solver++, flow matching and
consistency distillation (success vs chunk latency, with a Pareto plot).

On the human demonstrations (``--demos`` or ``$RLOX_DP_PUSHT_ZARR``), for each training seed:

* ``diffusion``: the PushT Diffusion Policy preset (U-Net 32-64-128, the ``diffusion_small``
  variant of ``benchmarks/pusht.py``), ``--steps`` gradient steps (45k: the budget at which DDPM-100
  reaches success 0.65);
* ``flow``: flow matching with the same network, windows, optimizer and budget;
* ``consistency``: a student distilled from that seed's diffusion checkpoint for ``--cd-steps``
  steps (its training time is reported with and without the teacher's).

Checkpoints go to ``--keep DIR`` (``<model>-<seed>.safetensors``); a checkpoint already there is
reused, not retrained, and an interrupted training run continues from its periodic checkpoint
(every 5000 steps; its training time is then this session's time per step times all steps), so
training can be spread over several sessions. Every checkpoint is then
evaluated under every sampler setting of :data:`SETTINGS` (DDPM-100 as the reference; 1, 2, 3, 5,
10 steps) on the same ``--episodes`` held-out reset seeds as ``benchmarks/pusht.py``: score (95 % t
interval) and success (95 % Wilson interval) pooled over seeds, network evaluations per chunk, and
the latency of one chunk at batch 1 with ``--threads`` threads, eager and with
``torch.compile`` (compiled outputs are checked against eager; timings alternate between the
two in rounds, median of round medians), timed on the first ``--latency-seeds`` seeds'
checkpoints (default 1: the latency depends on the network and the sampler, not on the weights). Each measured setting is stored at once in
``<keep>/eval/`` (keyed by the checkpoint's SHA-256 and the protocol) and reused by later runs;
``--score-only`` scores without timing, so one process per seed can score in parallel and a final
run times every chunk on an otherwise idle machine. Writes ``<out>/<name>.json`` and
``<out>/<name>.png`` (success vs compiled latency, the Pareto front drawn) and prints a table.

    python benchmarks/pusht_fewstep.py --keep runs/fewstep                 # 2 seeds: ~2 x (58 + 58 + CD) min train
    python benchmarks/pusht_fewstep.py --keep runs/fewstep --train-only --models diffusion --seeds 1 --first-seed 1
    python benchmarks/pusht_fewstep.py --keep runs/fewstep --score-only --seeds 1 --first-seed 1   # then without
    python benchmarks/pusht_fewstep.py --quick --keep runs/fewstep_quick        # smoke run (a minute)
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlox_dp import Trainer
from rlox_dp.envs.pusht import PUSHT_ENV_ID, load_pusht_demonstrations

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import mean_interval, wilson_interval  # noqa: E402
from plotting import pyplot  # noqa: E402
from pusht_fastest import chunk_latency, observation_window  # noqa: E402
from pusht_variants import LOWDIM_VARIANTS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
EVAL_ENVS = 10
#: the PushT preset U-Net (``pusht.py``'s diffusion_small) and the same network as a flow model.
_DP = dict(LOWDIM_VARIANTS["diffusion_small"][1])
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "diffusion": ("diffusion", _DP),
    "flow": ("flow", {**_DP, "noise_scheduler_type": "Euler", "num_inference_steps": 10}),
    "consistency": ("consistency", {"batch_size": _DP["batch_size"], "lr": 3e-4,
                                    "lr_warmup_steps": 500}),
}
#: model -> [(sampler, steps)]: DDPM-100 the reference; DPM-Solver++ equals DDIM at 1 and 2 steps.
SETTINGS: dict[str, list[tuple[str, int]]] = {
    "diffusion": [("DDPM", 100), *[("DDIM", n) for n in (1, 2, 3, 5, 10)],
                  *[("DPMSolver++", n) for n in (3, 5, 10)]],
    "flow": [*[("Euler", n) for n in (1, 2, 3, 5, 10)], *[("Heun", n) for n in (2, 3, 5)]],
    "consistency": [("Consistency", n) for n in (1, 2, 3)],
}
QUICK = {"down_dims": (16, 32), "n_groups": 4, "diffusion_step_embed_dim": 16,
         "num_train_timesteps": 10, "batch_size": 8}


def network_evaluations(sampler: str, steps: int) -> int:
    """Denoiser calls per chunk: Heun ``2n - 1``, every other sampler ``n``."""
    return 2 * steps - 1 if sampler == "Heun" else steps


def train_missing(model: str, seed: int, args: argparse.Namespace, demos: Any) -> dict[str, Any]:
    """Train ``model`` for ``seed`` unless ``<keep>/<model>-<seed>.safetensors`` exists."""
    path = Path(args.keep) / f"{model}-{seed}.safetensors"
    info_path = path.with_suffix(".json")
    if path.exists():
        return json.loads(info_path.read_text()) if info_path.exists() else {"reused": True}
    algorithm, overrides = MODELS[model]
    config = {**overrides, "obs": "keypoints", "log_every": 100, "checkpoint_every": 5000,
              "n_eval_episodes": 0, "total_steps": args.cd_steps if model == "consistency" else args.steps}
    if model == "consistency":
        config["teacher"] = str(Path(args.keep) / f"diffusion-{seed}.safetensors")
    if args.quick:
        config.update({k: v for k, v in QUICK.items() if model != "consistency" or k == "batch_size"})
        config["lr_warmup_steps"] = 2
    run_dir = Path(args.keep) / "runs" / f"{model}-{seed}"
    last = run_dir / "checkpoints" / "last.safetensors"
    if last.exists():  # an interrupted session: continue from its last periodic checkpoint
        trainer = Trainer.load(last, demos=demos, device="cpu", log_dir=run_dir, progress=args.progress)
        print(f"resuming {model} seed {seed} at step {trainer.state.step}", flush=True)
    else:
        trainer = Trainer(algorithm, env=PUSHT_ENV_ID, config=config, demos=demos, seed=seed,
                          device="cpu", log_dir=run_dir, progress=args.progress, preset=False)
    start = trainer.state.step
    metrics = trainer.train(config["total_steps"], evaluate=False)
    trainer.save(path)
    steps = int(metrics["step"])
    if steps == start and info_path.exists():  # nothing left to train: keep the recorded times
        return json.loads(info_path.read_text())
    # resumed runs: this session's time per step, scaled to all steps
    info = {"train_time_s": metrics["train_time_s"] * steps / max(steps - start, 1), "steps": steps,
            "resumed_at_step": start, "final_loss": metrics.get("loss"), "threads": torch.get_num_threads()}
    info_path.write_text(json.dumps(info, indent=2))
    print(f"trained {model} seed {seed}: {info['steps']} steps in {info['train_time_s']:.0f} s", flush=True)
    return info


def latencies(policies: dict[str, Any], window: dict[str, torch.Tensor],
              args: argparse.Namespace) -> dict[str, Any]:
    """Chunk latency of each policy (``eager``, optionally ``compiled``, configured alike),
    alternating in ``--rounds`` rounds (median of medians); ``compiled_ms`` is None without one."""
    if "compiled" in policies:
        with torch.no_grad():
            a, b = (p.predict_action_chunk(window, torch.Generator().manual_seed(0)) for p in policies.values())
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)  # compiled = eager
    rounds: dict[str, list[float]] = {kind: [] for kind in policies}
    for _ in range(args.rounds):
        for kind, p in policies.items():
            rounds[kind].append(chunk_latency(p, window, args.repeats, args.warmup)["median_s"])
    out: dict[str, float | None] = {"compiled_ms": None}
    out.update({f"{kind}_ms": 1000 * statistics.median(v) for kind, v in rounds.items()})
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a checkpoint file: cached evaluations are only reused for the same weights."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def evaluate(model: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every sampler setting of ``model``'s checkpoint for ``seed``: score, success, latency.

    Each setting's row is stored in ``<keep>/eval/`` as soon as it is measured, keyed by the
    checkpoint's digest and the evaluation protocol, so an interrupted session continues where it
    stopped. Scores (``--train-threads``) and latencies (``--threads``) are filled separately:
    ``--score-only`` processes (one per seed, in parallel) leave the latencies to a later run on
    an otherwise idle machine.
    """
    path = Path(args.keep) / f"{model}-{seed}.safetensors"
    digest = file_digest(path)
    trainer = Trainer.load(path, device="cpu", progress=False)
    policy = trainer.eval_policy
    policy.eval()
    policy.requires_grad_(False)
    window = observation_window(trainer)
    compiled = None
    rows = []
    for sampler, steps in SETTINGS[model]:
        steps = min(steps, trainer.config.num_train_timesteps)
        cache = Path(args.keep) / "eval" / f"{model}-{seed}-{sampler}{steps}-ep{args.episodes}-s{args.eval_seed}.json"
        row = json.loads(cache.read_text()) if cache.exists() else {}
        if row.get("checkpoint_sha256") != digest:
            row = {"model": model, "seed": seed, "sampler": sampler, "num_inference_steps": steps,
                   "network_evaluations": network_evaluations(sampler, steps), "checkpoint_sha256": digest}
        policy.configure_inference(sampler, steps)
        if "scores" not in row:
            torch.set_num_threads(args.train_threads)
            summary = trainer.evaluate(args.episodes, min(EVAL_ENVS, args.episodes), seed=args.eval_seed)
            row.update(score=summary["eval/score_mean"], success_rate=summary["eval/success_rate"],
                       scores=trainer.last_eval.scores.tolist(),
                       successes=trainer.last_eval.successes.astype(int).tolist())
        # timed before with these threads (and compiled when asked): other settings time again
        timed = ("eager_ms" in row and row.get("latency_threads") == args.threads
                 and (row["compiled_ms"] is not None or not args.compile))
        if not args.score_only and not timed and seed < args.first_seed + args.latency_seeds:
            if args.compile and compiled is None:
                compiled = copy.deepcopy(policy)
                compiled.compile_networks()
            policies = {"eager": policy}
            if args.compile:
                compiled.configure_inference(sampler, steps)
                policies["compiled"] = compiled
            torch.set_num_threads(args.threads)
            row.update(latencies(policies, window, args), latency_threads=args.threads)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(row))
        rows.append(row)
        latency = (f"chunk {row['eager_ms']:.1f} ms eager, {row['compiled_ms'] or float('nan'):.1f} ms compiled"
                   if "eager_ms" in row else "latency not measured")
        print(f"{model}-{seed} {sampler}{steps}: score {row['score']:.3f} success "
              f"{row['success_rate']:.2f} {latency}", flush=True)
    return rows


def pool(rows: list[dict[str, Any]], training: dict[str, dict[int, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Rows of one model and sampler setting pooled over seeds (episodes pooled for intervals)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["sampler"], r["num_inference_steps"]), []).append(r)
    out = []
    for (model, sampler, steps), members in groups.items():
        scores = np.concatenate([np.asarray(r["scores"], dtype=float) for r in members])
        timed = [r for r in members if "eager_ms" in r]
        successes = int(sum(sum(r["successes"]) for r in members))
        train = [training.get(model, {}).get(r["seed"], {}).get("train_time_s") for r in members]
        teacher = [training.get("diffusion", {}).get(r["seed"], {}).get("train_time_s")
                   for r in members] if model == "consistency" else [0.0] * len(members)
        total = [a + b for a, b in zip(train, teacher, strict=True) if a is not None and b is not None]
        out.append({"model": model, "sampler": sampler, "num_inference_steps": steps,
                    "network_evaluations": members[0]["network_evaluations"],
                    "seeds": [r["seed"] for r in members],
                    "score": mean_interval(scores), "success_rate": wilson_interval(successes, len(scores)),
                    "latency_seeds": [r["seed"] for r in timed],
                    "eager_ms": statistics.median(r["eager_ms"] for r in timed),
                    "compiled_ms": (statistics.median(r["compiled_ms"] for r in timed)
                                    if all(r["compiled_ms"] is not None for r in timed) else None),
                    "total_train_time_s": statistics.fmean(total) if total else None})
    return out


def pareto_plot(path: Path, pooled: list[dict[str, Any]]) -> None:
    """Success rate (Wilson interval) vs chunk latency (compiled, else eager); the Pareto front
    as a step line."""
    kind = "compiled" if all(p["compiled_ms"] is not None for p in pooled) else "eager"
    pooled = [{**p, "latency_ms": p[f"{kind}_ms"]} for p in pooled]
    plt = pyplot()

    colors = {"diffusion": "tab:blue", "flow": "tab:green", "consistency": "tab:red"}
    markers = {"DDPM": "s", "DDIM": "o", "DPMSolver++": "D", "Euler": "o", "Heun": "^",
               "Consistency": "*"}
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for p in pooled:
        s = p["success_rate"]
        ax.errorbar(p["latency_ms"], s["mean"], yerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]],
                    fmt=markers.get(p["sampler"], "o"), color=colors.get(p["model"], "k"), ms=7,
                    capsize=2, alpha=0.85)
        ax.annotate(f"{p['sampler']}{p['num_inference_steps']}", (p["latency_ms"], s["mean"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=7)
    front, best = [], -1.0
    for p in sorted(pooled, key=lambda q: q["latency_ms"]):
        if p["success_rate"]["mean"] > best:
            best = p["success_rate"]["mean"]
            front.append((p["latency_ms"], best))
    ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="0.4", lw=1, ls="--",
            label="Pareto front")
    for model, color in colors.items():
        ax.plot([], [], "o", color=color, label=model)
    ax.set_xscale("log")
    ax.set_xlabel(f"chunk latency at batch 1, {kind} (ms, log scale)")
    ax.set_ylabel("success rate (95 % Wilson interval)")
    ax.set_title("PushT keypoints: success vs latency of one action chunk")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", default=os.environ.get("RLOX_DP_PUSHT_ZARR"),
                        help="pusht_cchi_v7_replay.zarr (default: $RLOX_DP_PUSHT_ZARR)")
    parser.add_argument("--keep", required=True, metavar="DIR", help="checkpoint directory (reused)")
    parser.add_argument("--models", default="diffusion,flow,consistency", help="comma-separated subset")
    parser.add_argument("--seeds", type=int, default=2, help="number of training seeds")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="first training seed (one process per seed: --seeds 1 --first-seed S)")
    parser.add_argument("--steps", type=int, default=45_000, help="diffusion and flow gradient steps")
    parser.add_argument("--cd-steps", type=int, default=10_000, help="consistency distillation steps")
    parser.add_argument("--episodes", type=int, default=50, help="held-out evaluation episodes")
    parser.add_argument("--eval-seed", type=int, default=0, help="first held-out reset seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the latency")
    parser.add_argument("--latency-seeds", type=int, default=1,
                        help="time the chunks of the first N seeds' checkpoints (latency depends on the "
                             "network and the sampler, not on the weights)")
    parser.add_argument("--train-threads", type=int, default=1, help="torch threads for training/eval")
    parser.add_argument("--rounds", type=int, default=3, help="alternating eager/compiled timing rounds")
    parser.add_argument("--repeats", type=int, default=30, help="timed chunks per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed chunks per round")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="time eager chunks only (default with --quick: compiling is slow)")
    parser.add_argument("--train-only", action="store_true", help="train what is missing, do not evaluate")
    parser.add_argument("--score-only", action="store_true",
                        help="train what is missing and evaluate scores, no latency and no results "
                             "(one process per seed; a later run times the chunks)")
    parser.add_argument("--quick", action="store_true", help="tiny networks and budgets (smoke run)")
    parser.add_argument("--progress", action="store_true", help="progress bars")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument("--name", default="pusht_fewstep", help="results file name (without extension)")
    args = parser.parse_args(argv)
    if not args.demos:
        parser.error("--demos: give the PushT human demonstrations (.zarr) or set RLOX_DP_PUSHT_ZARR")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if any(m not in MODELS for m in args.models):
        parser.error(f"--models: expected a subset of {list(MODELS)}, got {args.models}")
    if args.latency_seeds < 1:
        parser.error(f"--latency-seeds: expected >= 1 (the first seed is always timed), got {args.latency_seeds}")
    if args.quick:
        args.steps, args.cd_steps = min(args.steps, 20), min(args.cd_steps, 20)
        args.episodes, args.rounds, args.repeats, args.warmup = min(args.episodes, 2), 1, 2, 1
        args.compile = False
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train what is missing, evaluate, write the JSON and the plot; returns the result."""
    args = parse_args(argv)
    pyplot()  # fail now, not after training, if matplotlib (the bench extra) is missing
    torch.set_num_threads(args.train_threads)
    Path(args.keep).mkdir(parents=True, exist_ok=True)
    demos = load_pusht_demonstrations(args.demos, obs_mode="keypoints")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    training: dict[str, dict[int, dict[str, Any]]] = {}
    for model in args.models:  # diffusion before consistency: the teacher must exist
        for seed in seeds:
            training.setdefault(model, {})[seed] = train_missing(model, seed, args, demos)
    if args.train_only:
        return {"training": training}
    rows = [r for model in args.models for seed in seeds for r in evaluate(model, seed, args)]
    if args.score_only:
        return {"training": training, "rows": rows}
    pooled = pool(rows, training)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{args.name}.png"
    pareto_plot(png, pooled)
    result = {"benchmark": "pusht_fewstep", "env": PUSHT_ENV_ID, "obs": "keypoints",
              "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "latency_threads": args.threads, "train_threads": args.train_threads,
              "machine": platform.machine(), "python": platform.python_version(), "quick": args.quick,
              "seeds": seeds, "steps": args.steps, "cd_steps": args.cd_steps,
              "episodes": args.episodes, "eval_seeds": [args.eval_seed, args.eval_seed + args.episodes - 1],
              "models": {m: {"algorithm": MODELS[m][0], "overrides": MODELS[m][1]} for m in args.models},
              "training": training, "pooled": pooled, "rows": rows, "plot": png.name}
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"\n{'model':12s} {'sampler':15s} {'NFE':>4s} {'score':>7s} {'success [95% CI]':>22s} "
          f"{'eager ms':>9s} {'compiled ms':>12s} {'train min':>10s}")
    for p in pooled:
        s, train = p["success_rate"], p["total_train_time_s"]
        print(f"{p['model']:12s} {p['sampler'] + str(p['num_inference_steps']):15s} "
              f"{p['network_evaluations']:>4d} {p['score']['mean']:>7.3f} {s['mean']:>8.2f} "
              f"[{s['low']:.2f}, {s['high']:.2f}] {p['eager_ms']:>9.2f} "
              f"{p['compiled_ms'] if p['compiled_ms'] is not None else float('nan'):>12.2f} "
              f"{(train or 0) / 60:>10.1f}")
    print(f"wrote {out / (args.name + '.json')} and {png}")
    return result


if __name__ == "__main__":
    main()
