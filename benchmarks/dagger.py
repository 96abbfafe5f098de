"""DAgger with the built-in experts: PushT (human demos + MPC labels) and InvertedDoublePendulum.

**PushT** (``--only pusht``): Diffusion Policy (the PushT preset, keypoints) trained on the 206
human episodes (``--demos PATH`` or ``$RLOX_DP_PUSHT_ZARR``) for ``--initial-steps``, then
``--rounds`` DAgger rounds with the MPC expert labelling the states the policy visits (per round:
``--episodes`` rollouts, labels every 8 steps of the expert's next 16 actions, ``--steps-per-round``
more gradient steps). Against it, human-only training with the **same total CPU time** (training
plus rollouts plus labelling): its step count is the DAgger run's total CPU time divided by the CPU
time per gradient step measured in the DAgger run's round 0. Both are evaluated on the same 50
held-out reset seeds (0-49; rollouts use seeds from 200,000), after every round with the preset's
DDIM-10 and at the end with DDPM-100 as well; reported per variant: score and success with 95 %
intervals pooled over the training seeds, and the failure count (episodes whose max coverage stays
below 0.5, i.e. score < 0.5 / 0.95). DAgger rows use the expert; the human-only rows stay the
headline protocol.

**InvertedDoublePendulum-v5** (``--only idp``, MuJoCo): the Diffusion Policy preset trained on
demonstrations of the built-in SAC expert, at an equal budget of expert actions (labels): clean
demos (``--idp-demos`` episodes), DART demos (the same episodes with N(0, 0.1^2) action noise
injected, today's default), and DAgger (``--idp-initial`` clean episodes, then rounds of
``--idp-episodes`` rollouts labelled every step with the expert's next 4 actions until the label
budget is spent). Evaluated on 20 held-out episodes (seeds 0-19).

Everything is resumable: finished runs are kept in ``<work-dir>/<name>.json`` and skipped, a
DAgger run continues after its last completed round (``DAgger.resume``). Writes
``results/dagger_pusht.{json,png}`` and ``results/dagger_idp.json``.

    python benchmarks/dagger.py --only pusht --seeds 2 --work-dir runs/dagger_bench   # ~2 CPU-hours per seed and variant
    python benchmarks/dagger.py --only idp --seeds 2 --work-dir runs/dagger_bench
    python benchmarks/dagger.py --only pusht --seed-list 1 --work-dir runs/dagger_bench  # seed 1 in another process
    python benchmarks/dagger.py --quick --only pusht --out runs/dagger_quick                    # smoke run (a minute)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlox_dp import Trainer
from rlox_dp.dagger import DAgger
from rlox_dp.envs.pusht import PUSHT_ENV_ID
from rlox_dp.presets import preset_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import mean_interval, wilson_interval  # noqa: E402
from plotting import pyplot  # noqa: E402
from pusht_expert import action_steps  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
IDP = "InvertedDoublePendulum-v5"
#: max coverage below this is a failure (the episode never got the block near the goal).
FAILURE_COVERAGE = 0.5
#: smoke settings of --quick (checks the pipeline, not the numbers).
QUICK_MODEL = {"down_dims": (16, 32), "n_groups": 4, "diffusion_step_embed_dim": 16, "num_train_timesteps": 10,
               "num_inference_steps": 2, "batch_size": 8}


def _cached(work: Path, name: str, run) -> dict[str, Any]:
    """``run()``'s result, stored as ``<work>/<name>.json``: computed once, then read back."""
    path = work / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = run()
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return result


def _fresh(path: Path) -> Path:
    """``path`` emptied: the scratch log directory of a run that starts over (nothing in it resumes)."""
    shutil.rmtree(path, ignore_errors=True)
    return path


def _quick_idp_expert() -> Any:
    """--quick: an untrained SAC policy stands in for the IDP expert (no minutes of training)."""
    import gymnasium as gym
    from stable_baselines3 import SAC

    from rlox_dp.experts import SB3Expert

    return SB3Expert(SAC("MlpPolicy", gym.make(IDP), seed=0, device="cpu"))


def _episode_stats(trainer: Trainer) -> dict[str, Any]:
    """Per-episode scores/successes/returns of the trainer's last evaluation."""
    r = trainer.last_eval
    out = {"returns": r.returns.tolist()}
    if r.scores is not None:
        out.update(scores=r.scores.tolist(), successes=r.successes.astype(int).tolist(),
                   failures=int(np.sum(r.scores < FAILURE_COVERAGE / 0.95)))
    return out


def _final_eval(trainer: Trainer, args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate on the held-out seeds with the preset sampler and (PushT) with DDPM-100."""
    out = {"preset": {**trainer.evaluate(args.eval_episodes, args.eval_envs, seed=0), **_episode_stats(trainer)}}
    if trainer.env_id == PUSHT_ENV_ID and not args.quick:
        trainer.eval_policy.configure_inference("DDPM", 100)
        out["ddpm100"] = {**trainer.evaluate(args.eval_episodes, args.eval_envs, seed=0), **_episode_stats(trainer)}
    return out


def pusht_config(args: argparse.Namespace) -> dict[str, Any]:
    """The PushT diffusion preset (U-Net 32-64-128, DDIM-10) with this benchmark's evaluation."""
    config = {**preset_for("diffusion", PUSHT_ENV_ID), "obs": "keypoints", "n_eval_episodes": args.eval_episodes,
              "n_eval_envs": args.eval_envs, "eval_seed": 0, "log_every": 100, "checkpoint_every": 1000,
              "lr_warmup_steps": 500}
    config.pop("total_steps")
    return {**config, **QUICK_MODEL, "lr_warmup_steps": 2} if args.quick else config


def run_pusht_dagger(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    out_dir = work / f"pusht_dagger_{seed}"
    labeller = None
    if args.quick:
        from rlox_dp.experts.labelling import PushTMPCLabeller
        from rlox_dp.experts.pusht import PushTMPCConfig

        labeller = PushTMPCLabeller(pusht_config(args)["horizon"], {"obs_mode": "keypoints"},
                                    PushTMPCConfig(horizon=4, n_knots=2, n_samples=8, n_iterations=1, n_elites=2))
    train_dir, last = work / f"pusht_dagger_{seed}_train", work / f"pusht_dagger_{seed}_train" / "checkpoints" / "last.safetensors"
    if (out_dir / "dagger.json").exists():
        dagger = DAgger.resume(out_dir, device=args.device, progress=args.progress, labeller=labeller)
    else:
        if last.exists():  # round 0 was interrupted: continue it from its last checkpoint
            trainer = Trainer.load(last, demos=args.demos, device=args.device, log_dir=train_dir, progress=args.progress)
        else:
            trainer = Trainer("diffusion", env=PUSHT_ENV_ID, demos=args.demos, config=pusht_config(args), seed=seed,
                              device=args.device, log_dir=_fresh(train_dir), progress=args.progress, preset=False)
        dagger = DAgger(trainer, {"rounds": args.rounds, "episodes": args.episodes, "initial_steps": args.initial_steps,
                                  "steps_per_round": args.steps_per_round, "n_envs": args.rollout_envs,
                                  "max_episode_steps": 16 if args.quick else None},
                        out_dir=out_dir, labeller=labeller)
    history = dagger.run()
    per_step = train_cpu_per_step(history)
    return {"variant": "dagger", "seed": seed, "history": history, "total_cpu_s": float(sum(round_cpu_s(history))),
            "cpu_per_step_s": per_step, "steps": dagger.trainer.state.step, "final": _final_eval(dagger.trainer, args)}


def _round_steps(history: list[dict[str, Any]]) -> list[int]:
    """Gradient steps trained in each round of a DAgger history."""
    return list(np.diff([0] + [row["step"] for row in history]))


def train_cpu_per_step(history: list[dict[str, Any]]) -> float:
    """Training CPU seconds per gradient step: round 0's (human data only, what the human-only arm
    runs); from the later rounds when round 0 was not measured (``train_cpu_s`` None: a resumed run
    whose interrupted process had trained all of it)."""
    measured = {row["round"]: (row["train_cpu_s"], n) for row, n in zip(history, _round_steps(history), strict=True)
                if row.get("train_cpu_s") is not None and n > 0}
    if not measured:
        raise ValueError("no DAgger round measured its training CPU time")
    cpu, steps = measured[0] if 0 in measured else np.sum(list(measured.values()), axis=0)
    return float(cpu / steps)


def round_cpu_s(history: list[dict[str, Any]]) -> list[float]:
    """CPU seconds of each DAgger round (training + rollouts + labelling); a round whose training
    time was not measured counts its steps at :func:`train_cpu_per_step`."""
    out = []
    for row, steps in zip(history, _round_steps(history), strict=True):
        train = row.get("train_cpu_s")
        train = train_cpu_per_step(history) * steps if train is None else train
        out.append(train + row.get("label_cpu_s", 0.0) + row.get("rollout_cpu_s", 0.0))
    return out


def run_pusht_human(seed: int, steps: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Human data only for ``steps`` steps; continues from its last checkpoint after an interruption
    (its CPU time is then this process's CPU time per step times all steps; ``resumed_at`` says
    from which step)."""
    log_dir = work / f"pusht_human_{seed}_train"
    last = log_dir / "checkpoints" / "last.safetensors"
    if last.exists():
        trainer = Trainer.load(last, demos=args.demos, device=args.device, log_dir=log_dir, progress=args.progress)
    else:
        trainer = Trainer("diffusion", env=PUSHT_ENV_ID, demos=args.demos, config=pusht_config(args), seed=seed,
                          device=args.device, log_dir=_fresh(log_dir), progress=args.progress, preset=False)
    resumed_at, cpu = trainer.state.step, time.process_time()
    trainer.train(steps, evaluate=False)
    cpu = (time.process_time() - cpu) * steps / max(1, trainer.state.step - resumed_at)
    return {"variant": "human", "seed": seed, "steps": steps, "resumed_at": resumed_at,
            "total_cpu_s": cpu, "final": _final_eval(trainer, args)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant and sampler: pooled score/success intervals, failures, CPU time."""
    out: dict[str, Any] = {}
    for variant in ("human", "dagger"):
        rows = [r for r in runs if r["variant"] == variant]
        for sampler in rows[0]["final"] if rows else ():
            scores = np.concatenate([r["final"][sampler]["scores"] for r in rows])
            successes = np.concatenate([r["final"][sampler]["successes"] for r in rows]).astype(int)
            out[f"{variant}/{sampler}"] = {
                "uses_expert": variant == "dagger", "seeds": len(rows), "episodes": int(len(scores)),
                "score": mean_interval(scores),
                "success_rate": wilson_interval(int(successes.sum()), len(successes)),
                "failures": int(np.sum(scores < FAILURE_COVERAGE / 0.95)),
                "steps": [r["steps"] for r in rows], "total_cpu_s": [r["total_cpu_s"] for r in rows]}
    return out


def round_curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The DAgger curve pooled over training seeds: per round, score / success with 95 % intervals
    (held-out episodes, preset sampler), failures, labels and cumulative CPU hours (mean over seeds)."""
    histories = [r["history"] for r in runs if r["variant"] == "dagger"]
    out = []
    for i in range(min((len(h) for h in histories), default=0)):
        rows = [h[i] for h in histories]
        if any("eval_episodes" not in row for row in rows):
            continue
        scores = np.concatenate([row["eval_episodes"]["scores"] for row in rows])
        successes = np.concatenate([row["eval_episodes"]["successes"] for row in rows]).astype(int)
        out.append({"round": i, "score": mean_interval(scores),
                    "success_rate": wilson_interval(int(successes.sum()), len(successes)),
                    "failures": int(np.sum(scores < FAILURE_COVERAGE / 0.95)),
                    "labels": sum(row.get("labels", 0) for row in rows),
                    "cpu_h": float(np.mean([np.sum(round_cpu_s(h)[: i + 1]) for h in histories]) / 3600)})
    return out


def pusht_action_statistics(stores: dict[str, list[Path]]) -> dict[str, dict[str, float]]:
    """Per group of PushT zarr stores (human layout): steps, and medians of the distance from
    each action (a target position) to the agent ``|a_t - agent_t|`` and of the change of action
    within an episode ``|a_t - a_{t-1}|``, in pixels: do the labels look like the human data?"""
    import zarr

    out = {}
    for name, paths in stores.items():
        to_agent, steps = [], []
        for path in paths:
            root = zarr.open_group(str(path), mode="r")
            actions, state = root["data/action"][:].astype(np.float64), root["data/state"][:, :2]
            to_agent.append(np.linalg.norm(actions - state, axis=1))
            steps.append(action_steps(actions, root["meta/episode_ends"][:]))
        out[name] = {"steps": int(sum(len(d) for d in to_agent)),
                     "action_to_agent_px_median": float(np.median(np.concatenate(to_agent))),
                     "action_step_px_median": float(np.median(np.concatenate(steps)))}
    return out


def plot(path: Path, runs: list[dict[str, Any]], episodes: int) -> None:
    """Score and success per DAgger round against cumulative CPU time; human-only as stars."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "eval/score_mean", "score"), (axes[1], "eval/success_rate", "success rate")):
        for r in runs:
            if r["variant"] == "dagger":
                h = r["history"]
                cpu = np.cumsum(round_cpu_s(h))
                ax.plot(cpu / 3600, [x.get(key, np.nan) for x in h], "o-", label=f"DAgger (MPC expert), seed {r['seed']}")
            else:
                value = r["final"]["preset"][key]
                ax.plot([r["total_cpu_s"] / 3600], [value], "*", ms=12, label=f"human only, seed {r['seed']}")
        ax.set_xlabel("CPU hours (training + rollouts + labelling)")
        ax.set_ylabel(f"{label} ({episodes} held-out seeds, DDIM-10)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("PushT keypoints: DAgger rounds with the MPC expert vs human data only, equal CPU time", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_pusht(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    pyplot()  # fail now, not after training, if matplotlib (the bench extra) is missing
    runs = []
    for seed in args.seed_list or range(args.seeds):
        dagger = _cached(work, f"pusht_dagger_{seed}", lambda s=seed: run_pusht_dagger(s, args, work))
        steps = max(1, round(dagger["total_cpu_s"] / dagger["cpu_per_step_s"]))
        human = _cached(work, f"pusht_human_{seed}", lambda s=seed, n=steps: run_pusht_human(s, n, args, work))
        runs += [dagger, human]
        print(f"seed {seed}: DAgger {dagger['final']['preset']['eval/score_mean']:.3f} score / "
              f"{dagger['final']['preset']['eval/success_rate']:.2f} success in {dagger['total_cpu_s'] / 60:.0f} CPU min; "
              f"human only ({steps} steps) {human['final']['preset']['eval/score_mean']:.3f} / "
              f"{human['final']['preset']['eval/success_rate']:.2f} in {human['total_cpu_s'] / 60:.0f} CPU min", flush=True)
    result = {"benchmark": "dagger_pusht", "demos": Path(args.demos).name if args.demos else None, "seeds": list(args.seed_list or range(args.seeds)), "quick": args.quick,
              "failure_coverage": FAILURE_COVERAGE, "summary": summarize(runs), "curve": round_curve(runs), "runs": runs,
              "action_statistics": pusht_action_statistics(
                  {"human": [Path(args.demos)], "expert_labelled": [work / f"pusht_dagger_{r['seed']}" / "labelled.zarr"
                                                                    for r in runs if r["variant"] == "dagger"]}),
              "settings": {k: v for k, v in vars(args).items() if k not in ("demos",)},
              "machine": {"platform": platform.platform(), "torch": torch.__version__,
                          "threads": torch.get_num_threads()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dagger_pusht.json").write_text(json.dumps(result, indent=1, default=str))
    plot(out / "dagger_pusht.png", runs, args.eval_episodes)
    for row in result["curve"]:
        print(f"round {row['round']} ({row['cpu_h']:.2f} CPU h, {row['labels']} labels): score {row['score']['mean']:.3f}"
              f"  success {row['success_rate']['mean']:.2f} [{row['success_rate']['low']:.2f}, "
              f"{row['success_rate']['high']:.2f}]  failures {row['failures']}/{row['score']['n']}")
    for name, row in result["action_statistics"].items():
        print(f"{name} actions ({row['steps']} steps): median |a - agent| {row['action_to_agent_px_median']:.1f} px, "
              f"median |a_t - a_(t-1)| {row['action_step_px_median']:.1f} px")
    for name, row in result["summary"].items():
        print(f"{name:>18}: score {row['score']['mean']:.3f} [{row['score']['low']:.3f}, {row['score']['high']:.3f}]"
              f"  success {row['success_rate']['mean']:.2f} [{row['success_rate']['low']:.2f}, "
              f"{row['success_rate']['high']:.2f}]  failures {row['failures']}/{row['episodes']}")
    return result


def run_idp_variant(variant: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Clean demos, DART demos or DAgger on InvertedDoublePendulum at ``args.idp_budget`` labels."""
    from rlox_dp.experts import collect_demonstrations, get_expert
    from rlox_dp.experts.labelling import get_labeller

    expert = _quick_idp_expert() if args.quick else get_expert(IDP, progress=args.progress)
    n_demos = args.idp_initial if variant == "dagger" else args.idp_demos
    demos = collect_demonstrations(IDP, expert, n_episodes=n_demos, seed=10_000,
                                   action_noise=0.1 if variant == "dart" else 0.0)
    config = {"n_eval_episodes": args.idp_eval_episodes, "n_eval_envs": 10, "eval_seed": 0, "checkpoint_every": 10**9}
    if args.quick:
        config.update(total_steps=4, lr_warmup_steps=2, hidden_dim=32, n_layers=1)
    trainer = Trainer("diffusion", env=IDP, demos=demos, config=config, seed=seed, device=args.device,
                      log_dir=_fresh(work / f"idp_{variant}_{seed}_train"), progress=args.progress)
    labels = demos.n_steps  # one expert action per recorded step
    if variant == "dagger":
        dagger_dir = work / f"idp_dagger_{seed}"
        labeller = get_labeller(IDP, trainer.config.horizon, expert=expert)
        dagger = (DAgger.resume(dagger_dir, device=args.device, progress=args.progress, labeller=labeller)
                  if (dagger_dir / "dagger.json").exists() else
                  DAgger(trainer, {"rounds": 50, "episodes": args.idp_episodes, "label_every": 1,
                                   "label_budget": max(1, args.idp_budget - labels),
                                   "steps_per_round": trainer.training.total_steps // 2, "evaluate": False},
                         out_dir=dagger_dir, labeller=labeller))
        history = dagger.run()
        trainer, labels = dagger.trainer, labels + sum(r.get("label_steps", 0) for r in history)
    else:
        trainer.train(evaluate=False)
    summary = trainer.evaluate(args.idp_eval_episodes, 10, seed=0)
    return {"variant": variant, "seed": seed, "expert_labels": int(labels), "steps": trainer.state.step,
            "return_mean": summary["eval/return_mean"], "returns": trainer.last_eval.returns.tolist()}


def run_idp(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    runs = [_cached(work, f"idp_{v}_{s}", lambda v=v, s=s: run_idp_variant(v, s, args, work))
            for s in (args.seed_list or range(args.seeds)) for v in ("clean", "dart", "dagger")]
    summary = {v: {"return": mean_interval(np.concatenate([r["returns"] for r in runs if r["variant"] == v]),
                                                 bounds=(-np.inf, np.inf)),
                   "expert_labels": [r["expert_labels"] for r in runs if r["variant"] == v],
                   "uses_expert_online": v == "dagger"} for v in ("clean", "dart", "dagger")}
    result = {"benchmark": "dagger_idp", "seeds": list(args.seed_list or range(args.seeds)), "label_budget": args.idp_budget,
              "summary": summary, "runs": runs}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "dagger_idp.json").write_text(json.dumps(result, indent=1))
    for v, row in summary.items():
        print(f"{v:>7}: return {row['return']['mean']:.1f} [{row['return']['low']:.1f}, {row['return']['high']:.1f}]"
              f"  expert labels {row['expert_labels']}")
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["pusht", "idp", "all"], default="all")
    parser.add_argument("--demos", default=os.environ.get("RLOX_DP_PUSHT_ZARR"), help="the human PushT zarr")
    parser.add_argument("--seeds", type=int, default=2, help="training seeds 0 .. N-1")
    parser.add_argument("--seed-list", type=int, nargs="+", default=None,
                        help="run only these seeds (one process per seed in parallel; a later call with "
                             "--seeds N reads the finished runs back and summarizes them all)")
    parser.add_argument("--initial-steps", type=int, default=15_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=20, help="PushT rollouts per round")
    parser.add_argument("--steps-per-round", type=int, default=7_500)
    parser.add_argument("--rollout-envs", type=int, default=10)
    parser.add_argument("--eval-episodes", type=int, default=50, help="PushT held-out episodes")
    parser.add_argument("--eval-envs", type=int, default=50)
    parser.add_argument("--idp-demos", type=int, default=50, help="clean / DART demo episodes")
    parser.add_argument("--idp-initial", type=int, default=10, help="DAgger's clean demo episodes")
    parser.add_argument("--idp-episodes", type=int, default=4, help="DAgger rollouts per round")
    parser.add_argument("--idp-budget", type=int, default=50_000, help="expert labels (actions) per variant")
    parser.add_argument("--idp-eval-episodes", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work-dir", default="runs/dagger_bench", help="runs, checkpoints, finished results")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--quick", action="store_true", help="tiny smoke settings")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args(argv)
    if args.quick:
        args.initial_steps, args.rounds, args.episodes, args.steps_per_round = 3, 1, 2, 3
        args.seeds, args.eval_episodes, args.eval_envs, args.rollout_envs = 1, 2, 2, 2
        args.idp_demos, args.idp_initial, args.idp_episodes, args.idp_budget = 2, 1, 1, 60
        args.idp_eval_episodes = 2
    if args.only in ("pusht", "all") and not args.demos:
        parser.error("PushT needs the human demonstrations: --demos PATH or $RLOX_DP_PUSHT_ZARR")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    out: dict[str, Any] = {}
    if args.only in ("pusht", "all"):
        out["pusht"] = run_pusht(args, work)
    if args.only in ("idp", "all"):
        out["idp"] = run_idp(args, work)
    return out


if __name__ == "__main__":
    main()
