"""Command line: ``rlox-dp train|eval|list|dagger`` (also ``python -m rlox_dp``), mirroring the API.

    python -m rlox_dp train diffusion --env Pendulum-v1
    python -m rlox_dp train diffusion --env gym_pusht/PushT-v0 --demos pusht.zarr --config obs=keypoints
    python -m rlox_dp eval runs/.../checkpoints/last.safetensors --episodes 50
    python -m rlox_dp dagger diffusion --env gym_pusht/PushT-v0 --demos pusht.zarr --dagger rounds=4 episodes=50

Errors print one line, ``rlox-dp: error: ...``, and exit with code 2 (``--debug`` adds the
traceback); Ctrl-C exits with 130 after printing what was evaluated so far.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

__all__ = ["format_table", "main", "parse_overrides"]


def _parse_value(text: str) -> Any:
    """``"3"`` -> 3, ``"1e-4"`` -> 1e-4, ``"true"`` -> True, ``"null"`` -> None,
    ``"64,128"`` -> [64, 128], anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [_parse_value(part) for part in text.split(",") if part != ""]
    lowered = text.lower()
    if lowered in ("true", "false", "none", "null"):
        return {"true": True, "false": False}.get(lowered)
    return text


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=3e-4", "down_dims=64,128,256"]`` -> ``{"lr": 3e-4, "down_dims": [64, 128, 256]}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--config expects key=value, got {item!r}")
        out[key.strip()] = _parse_value(value.strip())
    return out


def format_table(rows: dict[str, Any], title: str = "") -> str:
    """A two-column text table of metric names and values."""
    width = max([len(k) for k in rows] + [6])
    lines = [title] if title else []
    lines.append(f"{'metric':<{width}}  value")
    lines.append(f"{'-' * width}  {'-' * 12}")
    for key, value in rows.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlox-dp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    train = sub.add_parser("train", parents=[common], help="train (and evaluate) an algorithm on demonstrations")
    train.add_argument("algorithm", help="registered algorithm: diffusion, bc, bc_chunk")
    train.add_argument("--env", required=True, help="Gymnasium env id, e.g. Pendulum-v1")
    train.add_argument("--demos", default=None,
                       help="demonstrations (.zarr, .npz or a LeRobotDataset v3 folder); default: built-in expert")
    train.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    train.add_argument("--steps", type=int, default=None, help="gradient steps (default: config total_steps)")
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    train.add_argument("--threads", type=int, default=None, help="torch threads for CPU work (default: chosen from the free cores and the network size)")
    train.add_argument("--log-dir", default=None,
                       help="run directory: TensorBoard logs and checkpoints (new or empty, or the resumed "
                            "run's own; default runs/<algorithm>-<env>-<time>, beside the original when resuming)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run in a non-empty --log-dir (its checkpoints and TensorBoard logs)")
    train.add_argument("--resume", default=None, metavar="CHECKPOINT",
                       help="continue a run from a checkpoint (in a new run directory unless --log-dir names one)")
    train.add_argument("--eval-episodes", type=int, default=None)
    train.add_argument("--video-dir", default=None, help="save videos of a few evaluation episodes here")
    train.add_argument("--cache-dir", default=None, help="expert/demo cache (default $RLOX_DP_CACHE or ~/.cache/rlox_dp)")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    train.add_argument("--no-preset", action="store_true", help="ignore rlox_dp.presets for this env")

    ev = sub.add_parser("eval", parents=[common], help="evaluate a checkpoint in vectorized envs")
    ev.add_argument("checkpoint", help="a training checkpoint, or a policy file (Trainer.save_policy)")
    ev.add_argument("--episodes", type=int, default=None)
    ev.add_argument("--envs", type=int, default=None, help="parallel envs")
    ev.add_argument("--seed", type=int, default=None, help="first evaluation seed")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--threads", type=int, default=None, help="torch threads for CPU work (default: chosen from the free cores and the network size)")
    ev.add_argument("--video-dir", default=None)
    ev.add_argument("--sampler", default=None, metavar="KIND[:STEPS]",
                    help="diffusion only: evaluate with another sampler, e.g. DDPM:100 or DDIM:5")
    ev.add_argument("--no-progress", action="store_true")

    sub.add_parser("list", parents=[common],
                   help="list registered algorithms, denoisers, samplers, env specs and built-in experts")

    dag = sub.add_parser("dagger", parents=[common], help="DAgger: train, let the expert label the states the policy visits, repeat")
    dag.add_argument("algorithm", nargs="?", help="registered algorithm (not with --resume)")
    dag.add_argument("--env", help="Gymnasium env id with a labelling expert (not with --resume)")
    dag.add_argument("--demos", default=None, help="round-0 demonstrations (.zarr or .npz); default: built-in expert")
    dag.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="algorithm config overrides")
    dag.add_argument("--dagger", nargs="*", default=[], metavar="KEY=VALUE",
                     help="DAgger settings: rounds, episodes, steps_per_round, initial_steps, beta, ...")
    dag.add_argument("--out-dir", default=None, help="rounds, labelled data, checkpoints (default <log-dir>/dagger)")
    dag.add_argument("--resume", default=None, metavar="OUT_DIR", help="continue a DAgger run after its last round")
    for name, kwargs in [("--seed", {"type": int, "default": None}), ("--device", {"default": "auto"}),
                         ("--log-dir", {"default": None}), ("--cache-dir", {"default": None})]:
        dag.add_argument(name, **kwargs)
    dag.add_argument("--no-progress", action="store_true")
    dag.add_argument("--no-preset", action="store_true")
    return parser


def _run_train(args: argparse.Namespace) -> int:
    from rlox_dp import Trainer
    from rlox_dp.run_directory import check_writable_dir

    progress = not args.no_progress
    overrides = parse_overrides(args.config)
    if args.video_dir:
        check_writable_dir("--video-dir", args.video_dir)
    if args.resume:
        if overrides:
            raise ValueError("--config cannot change a resumed run's config; start a new run instead")
        _check_resume_matches(args)
        trainer = Trainer.load(args.resume, demos=args.demos, device=args.device, log_dir=args.log_dir,
                               cache_dir=args.cache_dir, progress=progress, overwrite=args.overwrite)
        trainer.threads = args.threads if args.threads is not None else trainer.threads
    else:
        trainer = Trainer(args.algorithm, env=args.env, config=overrides, demos=args.demos,
                          seed=args.seed, device=args.device, log_dir=args.log_dir,
                          cache_dir=args.cache_dir, progress=progress, preset=not args.no_preset,
                          overwrite=args.overwrite, threads=args.threads)
    logging.getLogger("rlox_dp").info(
        "training %s on %s (device %s, %d demonstration windows); logs in %s",
        trainer.algorithm_name, trainer.env_id, trainer.device, len(trainer.buffer), trainer.log_dir,
    )
    if args.eval_episodes is not None:
        trainer.training.replace(n_eval_episodes=args.eval_episodes)  # validated like the config
        trainer.training.n_eval_episodes = args.eval_episodes
    metrics = trainer.train(args.steps)
    if args.video_dir and not metrics.get("interrupted") and trainer.dist.is_main:
        trainer.evaluate(n_episodes=2, video_dir=args.video_dir, n_videos=2)
    rows = {"algorithm": trainer.algorithm_name, "env": trainer.env_id, **metrics,
            "checkpoint": str(trainer.log_dir / "checkpoints" / "last.safetensors")}
    if not trainer.dist.is_main:  # under torchrun only rank 0 reports
        return 130 if metrics.get("interrupted") else 0
    print(format_table(rows, title=f"rlox_dp train: {trainer.algorithm_name} on {trainer.env_id}"))
    return 130 if metrics.get("interrupted") else 0


def _check_resume_matches(args: argparse.Namespace) -> None:
    """``train ALGO --env ENV [--seed S] --resume CKPT``: the run must be the checkpoint's."""
    from rlox_dp.checkpoint import read_checkpoint_header

    if not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume: checkpoint {args.resume!r} does not exist or is not a file")
    meta = read_checkpoint_header(args.resume)  # cheap; Trainer.load verifies the whole file
    for what, given, saved in (("algorithm", args.algorithm, meta.get("algorithm")),
                               ("--env", args.env, meta.get("env")), ("--seed", args.seed, meta.get("seed"))):
        if given is not None and given != saved:
            raise ValueError(f"--resume: {what} {given!r} differs from the checkpoint's {saved!r} "
                             f"({args.resume}); a resumed run keeps its algorithm, env and seed")


def _configure_sampler(policy: Any, spec: str | None, where: str) -> None:
    """``--sampler KIND[:STEPS]`` on a diffusion policy (a no-op without ``--sampler``)."""
    if spec is None:
        return
    kind, _, steps = spec.partition(":")
    if not hasattr(policy, "configure_inference"):
        raise ValueError(f"--sampler applies to diffusion policies; {where} holds {policy.name!r}")
    if steps and not steps.isdigit():
        raise ValueError(f"--sampler expects KIND[:STEPS] such as DDPM:100, got {spec!r}")
    policy.configure_inference(kind.upper(), int(steps) if steps else None)


def _report_evaluation(evaluate: Any, title: str, rows: dict[str, Any]) -> int:
    """Run ``evaluate() -> summary`` and print the table; Ctrl-C reports the finished episodes."""
    from rlox_dp.evaluation import EvaluationInterrupted

    code = 0
    try:
        summary = evaluate()
    except EvaluationInterrupted as stop:  # Ctrl-C: report the episodes that finished
        summary, code = stop.summary(), 130
        title += f" (interrupted: {stop.n_finished} of {stop.n_requested} episodes finished)"
    print(format_table({**rows, **summary}, title=title))
    return code


def _run_eval(args: argparse.Namespace) -> int:
    from rlox_dp import Trainer
    from rlox_dp.checkpoint import read_checkpoint_header
    from rlox_dp.policy_io import POLICY_KIND

    if read_checkpoint_header(args.checkpoint).get("kind") == POLICY_KIND:
        return _run_eval_policy(args)
    trainer = Trainer.load(args.checkpoint, device=args.device, progress=not args.no_progress)
    trainer.threads = args.threads if args.threads is not None else trainer.threads
    _configure_sampler(trainer.eval_policy, args.sampler, args.checkpoint)
    return _report_evaluation(
        lambda: trainer.evaluate(args.episodes, args.envs, seed=args.seed, video_dir=args.video_dir,
                                 n_videos=2 if args.video_dir else 0),
        f"rlox_dp eval: {args.checkpoint}",
        {"algorithm": trainer.algorithm_name, "env": trainer.env_id, "step": trainer.state.step},
    )


def _run_eval_policy(args: argparse.Namespace) -> int:
    """``rlox-dp eval`` of a policy file (``Trainer.save_policy``): the env it records, no Trainer."""
    from rlox_dp import load_policy
    from rlox_dp.evaluation import evaluate_policy
    from rlox_dp.threads import configure_threads, policy_flops_per_sample
    from rlox_dp.training import TrainingConfig

    policy = load_policy(args.checkpoint, device=args.device)
    if policy.env_id is None:
        raise ValueError(f"{args.checkpoint} is a policy file without an env id; save it with "
                         "Trainer.save_policy(path) or policy.save(path, env=...)")
    _configure_sampler(policy, args.sampler, args.checkpoint)
    cfg = TrainingConfig.from_dict(policy.evaluation)  # the recorded protocol, else the defaults
    n_envs = args.envs if args.envs is not None else cfg.n_eval_envs
    flops = policy_flops_per_sample(policy) * n_envs if policy.device.type == "cpu" else None
    configure_threads(args.threads, policy.device, flops, "evaluation")
    return _report_evaluation(
        lambda: evaluate_policy(
            policy, policy.env_id, n_episodes=args.episodes if args.episodes is not None else cfg.n_eval_episodes,
            n_envs=n_envs, seed=args.seed if args.seed is not None else cfg.eval_seed,
            env_kwargs=policy.env_kwargs, video_dir=args.video_dir, n_videos=2 if args.video_dir else 0,
            progress=not args.no_progress,
        ).summary(),
        f"rlox_dp eval: {args.checkpoint} (policy file)",
        {"algorithm": policy.name, "env": policy.env_id},
    )


def _run_dagger(args: argparse.Namespace) -> int:
    from rlox_dp import Trainer
    from rlox_dp.dagger import DAgger

    progress = not args.no_progress
    if args.resume:
        if args.config or args.dagger or args.algorithm or args.env:
            raise ValueError("--resume continues a DAgger run as configured; drop algorithm, --env, "
                             "--config and --dagger")
        dagger = DAgger.resume(args.resume, device=args.device, progress=progress)
    else:
        if not args.algorithm or not args.env:
            raise ValueError("dagger needs an algorithm and --env (or --resume OUT_DIR)")
        trainer = Trainer(args.algorithm, env=args.env, config=parse_overrides(args.config), demos=args.demos,
                          seed=args.seed, device=args.device, log_dir=args.log_dir,
                          cache_dir=args.cache_dir, progress=progress, preset=not args.no_preset)
        dagger = DAgger(trainer, parse_overrides(args.dagger), out_dir=args.out_dir)
    for row in dagger.run():
        print(format_table({k: v for k, v in row.items() if k != "round"}, title=f"DAgger round {row['round']}"))
    print(f"DAgger run: {dagger.out_dir}")
    return 0


def _run_list() -> int:
    from rlox_dp import available_algorithms
    from rlox_dp.diffusion import available_samplers
    from rlox_dp.envs import available_envs
    from rlox_dp.experts import expert_env_ids
    from rlox_dp.networks import available_denoisers

    print("algorithms: " + ", ".join(available_algorithms()))
    print("denoisers: " + ", ".join(available_denoisers()))
    print("samplers: " + ", ".join(available_samplers()))
    print("envs with a spec (others: generic): " + ", ".join(available_envs()))
    print("built-in experts: " + ", ".join(expert_env_ids()))
    return 0


def _one_line(err: BaseException) -> str:
    """The error as one line: its message (a KeyError's without quotes), the type name for
    unexpected kinds, advice for allocation failures."""
    import torch

    from rlox_dp.checkpoint import CheckpointError
    from rlox_dp.runtime import NonFiniteLossError

    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or type(err).__name__
    out_of_memory = isinstance(err, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(err, RuntimeError) and ("can't allocate" in text or "out of memory" in text))
    if out_of_memory:
        return (f"out of memory ({type(err).__name__}: {text[:300]}); reduce the sizes in the config "
                "(horizon, batch_size, network widths) or the number of parallel envs")
    expected = (ValueError, TypeError, KeyError, OSError, CheckpointError, NonFiniteLossError)
    if isinstance(err, expected):
        return text
    return f"{type(err).__name__}: {text} (--debug shows the traceback)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rlox-dp``; returns the process exit code (2 for any error, 130 for Ctrl-C).

    Every error is reported as one line ``rlox-dp: error: ...`` on stderr (``--debug`` prints the
    traceback first).
    """
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = _build_parser().parse_args(argv)

    try:
        if args.command == "train":
            return _run_train(args)
        if args.command == "dagger":
            return _run_dagger(args)
        if args.command == "eval":
            return _run_eval(args)
        return _run_list()
    except KeyboardInterrupt:
        print("rlox-dp: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        print(f"rlox-dp: error: {_one_line(err)}", file=sys.stderr)
        return 2
