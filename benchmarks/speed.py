"""CPU speed of rlox_dp's Diffusion Policy, with the shapes of LeRobot's peer benchmark.

Configs use the shapes of the peer script ``../shared/peer/lerobot_dp_bench.py`` (horizon 16, n_obs_steps 2,
2-D actions, 100 train timesteps, kernel 5, FiLM scale, step embedding 128):

- ``lowdim_small``: obs ``environment_state (16,)`` + ``agent_pos (2,)``, down_dims 256/512/1024
- ``lowdim``: same observations, down_dims 512/1024/2048
- ``image``: obs ``image (3, 96, 96)`` uint8 + ``agent_pos (2,)``, ResNet-18 (GroupNorm, spatial
  softmax 32, 84x84 crops), down_dims 512/1024/2048
- ``pusht_keypoints_fast``: our PushT keypoints env ``state (20,)``, down_dims 256/512/1024
  (the paper's / our default U-Net)
- ``pusht_keypoints``: the same observations, down_dims 64/128/256: the U-Net of
  ``benchmarks/pusht.py`` (our recommended PushT keypoints policy); keypoint configs also run the
  evaluation-throughput task (50 episodes x 300 steps, 50 envs)
- ``tiny``: a few-kB network for smoke tests

Tasks (each in its own subprocess, so the peak RSS of ``resource.getrusage`` is per task):
``train_bs8`` / ``train_bs64`` (zero_grad + compute_loss + backward + AdamW step on one fixed
batch, as the peer, but with the fused AdamW our Trainer uses; the peer's default foreach AdamW is
timed as well; data sampling from a :class:`DemonstrationBuffer`, gradient clipping, the
EMA update and the Trainer's own step, ``sample_batch`` + ``TrainStep``, are timed separately),
``infer_ddpm100``, ``infer_ddim10``, ``infer_ddim<K>`` (one action chunk for one observation window, batch 1, via
``predict_action_chunk``), ``eval`` (``evaluate_policy`` on PushT keypoints, 10 envs, plus the
env alone). Timings: ``time.perf_counter``, warm-up first, then the median of repeats. Like the
peer, each repeat records the share of the machine's CPU used by *other* processes and the
median uses only "clean" repeats (< ``--quiet-thr``) when enough exist.

    python benchmarks/speed.py --config lowdim_small
    python benchmarks/speed.py --config lowdim --peer-python "$HOME/lerobot-venv/bin/python"

With ``--peer-python`` every common task is run by the peer script too, alternating ours and
theirs task by task with the same quiet/repeat settings; its raw results go to
``results/lerobot_peer_<config>.json`` and the ratios to ``results/speed_vs_lerobot.json``.
Ratios are ``their time / our time``: > 1 means rlox_dp is faster (for training this equals
our steps/s divided by theirs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_timing import rss_peak_mib, timeit, wait_for_quiet  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
#: the peer script, beside the checkout (``--peer-script`` points elsewhere).
PEER_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "peer" / "lerobot_dp_bench.py"
OBS = {
    "lowdim": {"environment_state": (16,), "agent_pos": (2,)},
    "image": {"image": (3, 96, 96), "agent_pos": (2,)},
    "keypoints": {"state": (20,)},
}
CONFIGS: dict[str, dict[str, Any]] = {
    "lowdim_small": {"obs": "lowdim", "down_dims": (256, 512, 1024)},
    "lowdim": {"obs": "lowdim", "down_dims": (512, 1024, 2048)},
    "image": {"obs": "image", "down_dims": (512, 1024, 2048)},
    "pusht_keypoints_fast": {"obs": "keypoints", "down_dims": (256, 512, 1024)},
    "pusht_keypoints": {"obs": "keypoints", "down_dims": (64, 128, 256)},
    "tiny": {"obs": "lowdim", "down_dims": (16, 32), "diffusion_step_embed_dim": 16, "n_groups": 4},
}
PEER_TASKS = ("infer_ddim10", "infer_ddpm100", "train_bs8", "train_bs64")


# ---------------------------------------------------------------------------------- construction
def synthetic_demos(obs_kind: str, n_episodes: int, seed: int = 0):
    """PushT-shaped random demonstrations: episodes of 100..150 steps, positions in [0, 512]
    pixels, images uint8 ``(N, 3, 96, 96)``; actions ``(N, 2)`` in [0, 512]."""
    import numpy as np

    from rlox_dp.buffers import Demonstrations

    rng = np.random.default_rng(seed)
    ends = np.cumsum(rng.integers(100, 151, size=n_episodes)).astype(np.int64)
    n = int(ends[-1])
    obs = {k: (rng.integers(0, 256, (n, *s), dtype=np.uint8) if len(s) == 3
               else (rng.random((n, *s)) * 512).astype(np.float32)) for k, s in OBS[obs_kind].items()}
    return Demonstrations(obs, (rng.random((n, 2)) * 512).astype(np.float32), ends)


def build(cfg_name: str, n_episodes: int | None = None, seed: int = 0):
    """``(policy, buffer)``: a DiffusionPolicy of config ``cfg_name`` (DDPM, 100 train steps) whose
    normalizer is fitted on synthetic demos held by the returned DemonstrationBuffer."""
    import gymnasium as gym
    import numpy as np
    import torch

    from rlox_dp.acceleration import accelerate
    from rlox_dp.algorithms import DiffusionConfig, DiffusionPolicy
    from rlox_dp.buffers import DemonstrationBuffer

    spec = dict(CONFIGS[cfg_name])
    obs_kind = spec.pop("obs")
    config = DiffusionConfig.from_dict({"horizon": 16, "n_obs_steps": 2, "n_action_steps": 8,
                                        "num_train_timesteps": 100, "noise_scheduler_type": "DDPM",
                                        "kernel_size": 5, **spec})
    if n_episodes is None:
        n_episodes = 20 if obs_kind == "image" else 200
    demos = synthetic_demos(obs_kind, n_episodes, seed)
    buffer = DemonstrationBuffer(demos, config.window)
    obs_space = gym.spaces.Dict({
        k: gym.spaces.Box(0, 255, s, np.uint8) if len(s) == 3 else gym.spaces.Box(-np.inf, np.inf, s, np.float32)
        for k, s in OBS[obs_kind].items()})
    act_space = gym.spaces.Box(0.0, 512.0, (2,), np.float32)
    torch.manual_seed(seed)
    policy = DiffusionPolicy(config, obs_space, act_space, buffer.normalizer)
    return accelerate(policy), buffer  # inference fast paths, as Trainer and load_policy


def count_params(policy) -> dict[str, int]:
    """Total, denoiser and observation-encoder parameter counts."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"total": count(policy), "unet": count(policy.denoiser), "rgb_encoder": count(policy.obs_encoder)}


# ---------------------------------------------------------------------------------- tasks
def task_train(cfg_name: str, batch_size: int, opts: dict[str, float]) -> dict[str, Any]:
    """Training step at ``batch_size``: the peer's step (fwd + bwd + AdamW on a fixed batch), plus
    buffer sampling, clip_grad_norm_, the EMA update and the Trainer's step (``TrainStep``)."""
    import torch

    from rlox_dp.distributed import DistributedContext
    from rlox_dp.ema import EMA
    from rlox_dp.training import TrainingConfig
    from rlox_dp.training.train_step import TrainStep, sample_batch

    policy, buffer = build(cfg_name)
    policy.train()
    gen, data_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    # fused AdamW, as rlox_dp's Trainer (the peer uses the default, a foreach loop: timed below)
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), eps=1e-8,
                            weight_decay=1e-6, fused=True)
    batch = buffer.sample(batch_size, generator=data_gen)

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = policy.compute_loss(batch, gen)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        step.loss = float(loss.detach())
        return {"fwd": t1 - t0, "bwd": t2 - t1, "opt": time.perf_counter() - t2}

    reps, warm = int(opts["repeats"]), 1 if opts["quick"] else 2
    out: dict[str, Any] = {"batch_size": batch_size, "params": count_params(policy)}
    out["step"] = timeit(step, warm, reps, opts)
    out["rss_after_step_mib"] = rss_peak_mib()  # before the EMA copy and the foreach-AdamW state below
    out["steps_per_s"] = 1.0 / out["step"]["median_s"]
    out["loss_finite"] = bool(torch.isfinite(torch.tensor(step.loss)))
    few = {**opts, "quiet_wait": 0.0, "max_extra": 0}
    out["sample_batch"] = timeit(lambda: buffer.sample(batch_size, generator=data_gen), 3, 30, few)
    out["clip_grad_norm"] = timeit(lambda: torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0), 1, 5, few)
    ema = EMA(policy)
    out["ema_update"] = timeit(lambda: ema.update(policy), 1, 5, few)

    # What Trainer.train runs per gradient step, with the config's defaults (its own optimizer,
    # EMA, warmup + cosine LR, clipping): sample_batch + TrainStep.
    training = TrainingConfig().resolved(policy.config)  # the defaults a Trainer run gets
    train_step = TrainStep(policy, training, device=torch.device("cpu"))
    n_steps = {"n": 0}

    def trainer_step() -> None:
        b, global_batch = sample_batch(buffer, batch_size, data_gen, torch.device("cpu"), DistributedContext())
        train_step(b, step=n_steps["n"], total_steps=10**6, generator=gen, global_batch=global_batch)
        n_steps["n"] += 1

    out["trainer_step"] = timeit(trainer_step, 1, max(3, reps // 2), few)
    out["trainer_steps_per_s"] = 1.0 / out["trainer_step"]["median_s"]
    train_step.check_finite()
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4, betas=(0.95, 0.999), eps=1e-8,
                            weight_decay=1e-6)  # the peer's optimizer: the default (foreach) AdamW
    out["step_foreach_adamw"] = timeit(step, 1, max(3, reps // 2), opts)
    out["steps_per_s_foreach_adamw"] = 1.0 / out["step_foreach_adamw"]["median_s"]
    return out


def task_infer(cfg_name: str, sampler: str, steps: int, opts: dict[str, float]) -> dict[str, Any]:
    """Latency of one action chunk for one raw observation window (batch 1, ``predict_action_chunk``:
    normalize + encode + ``steps`` denoiser calls + unnormalize)."""
    import torch

    policy, buffer = build(cfg_name)
    policy.eval()
    policy.configure_inference(sampler, steps)
    window = buffer.window(torch.tensor([0]))  # normalized; raw units below
    obs = {k: policy.normalizer.unnormalize(k, v) if v.ndim == 3 else (v * 255).to(torch.uint8)
           for k, v in window.obs.items()}
    gen = torch.Generator().manual_seed(3)
    chunk = policy.predict_action_chunk(obs, gen)
    out: dict[str, Any] = {"scheduler": sampler, "num_inference_steps": steps, "params": count_params(policy),
                           "chunk_shape": list(chunk.shape), "chunk_finite": bool(torch.isfinite(chunk).all())}
    reps = int(opts["repeats"])
    out["policy"] = timeit(lambda: policy.predict_action_chunk(obs, gen), 1 if steps >= 100 else 2, reps, opts)
    out["per_unet_call_ms"] = 1000 * out["policy"]["median_s"] / steps
    return out


class _ConstantPolicy:
    """Env-only baseline for :func:`evaluate_policy`: always the centre of the table."""

    def reset(self, env_mask=None) -> None:
        """Nothing to reset."""

    def select_action(self, obs):
        """``(n_envs, 2)`` actions at (256, 256)."""
        import numpy as np

        return np.full((next(iter(obs.values())).shape[0], 2), 256.0, np.float32)


def task_eval(cfg_name: str, steps: int, opts: dict[str, float]) -> dict[str, Any]:
    """Wall time and env steps/s of ``evaluate_policy`` on PushT keypoints (the paper's protocol:
    50 episodes x 300 steps, here in 50 vectorized envs), DDIM ``steps``, and of the env alone
    (constant actions). Untrained weights never finish early, so this is the worst case."""
    import torch  # noqa: F401

    from rlox_dp.evaluation import evaluate_policy

    if CONFIGS[cfg_name]["obs"] != "keypoints":
        raise ValueError(f"--tasks eval needs a PushT keypoints config, got {cfg_name!r}")
    policy, _ = build(cfg_name)
    policy.eval()
    policy.configure_inference("DDIM", steps)
    max_steps = 40 if opts["quick"] else 300
    n = 10 if opts["quick"] else 50
    kwargs = dict(n_episodes=n, n_envs=n, seed=0, env_kwargs={"obs_mode": "keypoints"},
                  max_episode_steps=max_steps)
    out: dict[str, Any] = {"n_envs": n, "n_episodes": n, "max_episode_steps": max_steps,
                           "sampler": f"DDIM{steps}"}
    for name, pol in (("env_only", _ConstantPolicy()), ("policy", policy)):
        res = evaluate_policy(pol, "gym_pusht/PushT-v0", **kwargs)
        out[name] = {"env_steps": res.env_steps, "wall_s": res.wall_time_s,
                     "env_steps_per_s": res.env_steps / res.wall_time_s}
    return out


def run_task(cfg_name: str, task: str, opts: dict[str, float]) -> dict[str, Any]:
    """Run one task in this process with ``opts["threads"]`` torch threads; adds load and RSS."""
    import torch

    torch.set_num_threads(int(opts["threads"]))
    res: dict[str, Any] = {"loadavg_start": os.getloadavg()}
    if task == "baseline":  # RSS after the imports, before building anything
        import rlox_dp.algorithms  # noqa: F401
        import rlox_dp.envs  # noqa: F401
    elif task.startswith("train_bs"):
        res.update(task_train(cfg_name, int(task[len("train_bs"):]), opts))
    elif task.startswith(("infer_ddpm", "infer_ddim")):
        res.update(task_infer(cfg_name, task[6:10].upper(), int(task[10:]), opts))
    elif task.startswith("eval"):
        res.update(task_eval(cfg_name, int(task[len("eval_ddim"):] or 10), opts))
    else:
        raise ValueError(f"unknown task {task!r}; expected baseline, train_bs<N>, infer_ddpm<K>, "
                         "infer_ddim<K>, eval_ddim<K>")
    res.update(torch=torch.__version__, python=platform.python_version(), quick=bool(opts["quick"]), loadavg_end=os.getloadavg(), rss_peak_mib=rss_peak_mib(), torch_threads=torch.get_num_threads())
    return res


# ---------------------------------------------------------------------------------- driver
def _spawn(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return {**json.loads(line[len("@@RESULT@@"):]), "wall_s": time.perf_counter() - t0}
    return {"error": (p.stderr or p.stdout)[-3000:], "rc": p.returncode}


def _cpu_per_repeat(summary: dict[str, Any]) -> list[float]:
    """Process CPU seconds of every repeat (ours: ``cpu_s``; the peer's: ``own_cores * t``)."""
    if "cpu_s" in summary:
        return list(summary["cpu_s"])
    return [c * t for c, t in zip(summary["own_cores"], summary["all_s"], strict=False)]


def _pool(results: list[dict[str, Any]], key: str, thr: float) -> tuple[list[float], list[float]]:
    """All repeat times of ``results[*][key]`` and those with other processes below ``thr``."""
    reps = [(t, f) for r in results if key in r for t, f in zip(r[key]["all_s"], r[key]["foreign_share"], strict=False)]
    return [t for t, _ in reps], [t for t, f in reps if f < thr]


def _rss(res: dict[str, Any]) -> float:
    """Peak RSS comparable with the peer's: for training, before our extra EMA / foreach measurements."""
    return res.get("rss_after_step_mib", res["rss_peak_mib"])


def ratios(ours: dict[str, list], theirs: dict[str, list], fast_task: str | None, thr: float = 0.05) -> dict[str, Any]:
    """Their time / our time per common task (> 1: rlox_dp faster) and RSS theirs / ours (> 1: we
    use less), from all rounds (round ``r`` of ours and of theirs ran back to back).

    ``speed_ratio``: ratio of the medians of the clean repeats (other processes < ``thr`` of the
    machine; on 2 busy cores a 2-thread run slows down up to 6x) when both sides have >= 3, else
    ``speed_ratio_of_min`` (fastest repeats). ``*_all`` use every repeat; ``cpu_ratio`` compares
    process CPU seconds per repeat."""
    med = statistics.median
    out: dict[str, Any] = {}
    tasks = [*PEER_TASKS] + ([fast_task] if fast_task else [])
    for task in tasks:
        key = "step" if task.startswith("train") else "policy"
        a_runs, b_runs = ours.get(task, []), theirs.get("infer_ddim10" if task == fast_task else task, [])
        (a_all, a_clean), (b_all, b_clean) = _pool(a_runs, key, thr), _pool(b_runs, key, thr)
        if not a_all or not b_all:
            continue
        clean = len(a_clean) >= 3 and len(b_clean) >= 3
        row = {"n_ours": len(a_all), "n_clean_ours": len(a_clean), "n_theirs": len(b_all), "n_clean_theirs": len(b_clean),
               "ours_clean_median_s": med(a_clean) if clean else None,
               "theirs_clean_median_s": med(b_clean) if clean else None,
               "ours_min_s": min(a_all), "theirs_min_s": min(b_all),
               "speed_ratio": med(b_clean) / med(a_clean) if clean else min(b_all) / min(a_all),
               "speed_ratio_basis": "clean medians" if clean else "minimum",
               "speed_ratio_of_min": min(b_all) / min(a_all), "speed_ratio_all": med(b_all) / med(a_all)}
        if task == fast_task:
            out[f"best_ours_{task}_vs_theirs_infer_ddim10"] = row
            continue
        cpu_a = [c for r in a_runs if key in r for c in _cpu_per_repeat(r[key])]
        cpu_b = [c for r in b_runs if key in r for c in _cpu_per_repeat(r[key])]
        row.update(cpu_ratio=med(cpu_b) / med(cpu_a),
                   rss_ratio=max(r["rss_peak_mib"] for r in b_runs) / max(_rss(r) for r in a_runs),
                   params_ours=a_runs[0]["params"]["total"], params_theirs=b_runs[0]["params"]["total"])
        out[task] = row
    base = [(a["rss_peak_mib"], b["rss_peak_mib"]) for a, b in zip(ours.get("baseline", []), theirs.get("baseline", []), strict=False)
            if "rss_peak_mib" in a and "rss_peak_mib" in b]
    if base:
        out["baseline_rss_mib"] = {"ours": base[-1][0], "theirs": base[-1][1]}
    return out


# The peer script pins 2 torch threads in a module constant; this runs its own worker with another.
PEER_WORKER = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('peer', sys.argv[1]); "
               "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); m.NUM_THREADS = int(sys.argv[2]); "
               "m.run_worker(sys.argv[3], sys.argv[4], '--quick' in sys.argv)")


def _write(out_dir: Path, suffix: str, ours: dict[str, Any], theirs: dict[str, Any], fast: str) -> None:
    """Write our results, the peer's, and the ratios (under key ``<config><suffix>``)."""
    ours["loadavg_end"] = os.getloadavg()
    (out_dir / f"speed_{ours['config']}{suffix}.json").write_text(json.dumps(ours, indent=1))
    if not theirs["tasks"]:
        return
    (out_dir / f"lerobot_peer_{ours['config']}{suffix}.json").write_text(json.dumps(theirs, indent=1))
    path = out_dir / "speed_vs_lerobot.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    table["definition"] = (
        "speed_ratio = LeRobot median wall time / rlox_dp median wall time (> 1: rlox_dp faster; for "
        "training = our steps/s / theirs); speed_ratio_of_min: the same with the fastest repeats; "
        "cpu_ratio: the same with the process CPU seconds per repeat (less sensitive to other load); "
        "rss_ratio = LeRobot peak RSS / ours (> 1: we use less)")
    table[ours["config"] + suffix] = {
        "date": ours["date"], "threads": ours["threads"],
        "torch_ours": next((r["torch"] for rs in ours["tasks"].values() for r in rs if "torch" in r), None),
        "torch_theirs": theirs.get("versions", {}).get("torch"), "loadavg_start": ours["loadavg_start"],
        "loadavg_end": ours["loadavg_end"], "quick_tasks": sorted(t for t, rs in ours["tasks"].items() if any(r.get("quick") for r in rs)),
        "ratios": ratios(ours["tasks"], theirs["tasks"], fast, ours["quiet_thr"])}
    path.write_text(json.dumps(table, indent=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=list(CONFIGS), default="lowdim_small")
    ap.add_argument("--tasks", default=None, help="comma list (default: peer tasks + infer_ddim<fast-steps> [+ eval])")
    ap.add_argument("--fast-steps", type=int, default=5, help="DDIM steps of our fastest sampler setting")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (files get _t<N> unless 2)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="ours/theirs alternations per common task")
    ap.add_argument("--quick", action="store_true", help="3 repeats, short eval episodes")
    ap.add_argument("--quiet-thr", type=float, default=0.05)
    ap.add_argument("--quiet-wait", type=float, default=3.0, help="max s to wait for quiet per repeat")
    ap.add_argument("--max-extra", type=int, default=3, help="extra repeats to replace disturbed ones")
    ap.add_argument("--max-busy", type=float, default=0.5, help="cores other processes may use at a start")
    ap.add_argument("--quiet-tries", type=int, default=4, help="checks (20 s apart) for --max-busy")
    ap.add_argument("--peer-python", default=None, help="python of the LeRobot venv: run the peer too")
    ap.add_argument("--peer-script", default=str(PEER_SCRIPT),
                    help="the peer benchmark script (default: ../shared/peer/lerobot_dp_bench.py beside the repo)")
    ap.add_argument("--our-python", default=sys.executable,
                    help="python running our workers (rlox_dp from this checkout), e.g. one with the peer's torch")
    ap.add_argument("--tag", default="", help="suffix of the result files, e.g. torch211")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--merge", action="store_true", help="keep earlier results of tasks not run now")
    ap.add_argument("--worker", nargs=2, metavar=("CFG", "TASK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    opts = {"threads": args.threads, "repeats": 3 if args.quick else args.repeats, "quick": args.quick,
            "quiet_thr": args.quiet_thr, "quiet_wait": args.quiet_wait, "max_extra": args.max_extra}
    if args.worker:
        print("@@RESULT@@" + json.dumps(run_task(args.worker[0], args.worker[1], opts)), flush=True)
        return {}

    fast = f"infer_ddim{args.fast_steps}"
    suffix = ("" if args.threads == 2 else f"_t{args.threads}") + (f"_{args.tag}" if args.tag else "")
    keypoints = CONFIGS[args.config]["obs"] == "keypoints"
    tasks = args.tasks.split(",") if args.tasks else (
        ["baseline", *PEER_TASKS, fast] + (["eval_ddim10", f"eval_ddim{args.fast_steps}"] if keypoints else []))
    quick = ["--quick"] if args.quick else []
    me = [args.our_python, str(Path(__file__).resolve()), "--threads", str(args.threads),
          "--repeats", str(args.repeats), "--quiet-thr", str(args.quiet_thr), "--quiet-wait",
          str(args.quiet_wait), "--max-extra", str(args.max_extra), *quick]
    peer_env = {**os.environ, "BENCH_QUIET_THR": str(args.quiet_thr), "BENCH_QUIET_MAX_WAIT": str(args.quiet_wait),
                "BENCH_MAX_EXTRA": str(args.max_extra)}
    our_env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if args.peer_python and not Path(args.peer_script).is_file():
        ap.error(f"--peer-script: no file at {args.peer_script}")
    peer = [args.peer_python, "-c", PEER_WORKER, args.peer_script, str(args.threads)] if args.peer_python else None
    ours: dict[str, Any] = {"config": args.config, "spec": CONFIGS[args.config], "python_exe": args.our_python,
                            "threads": args.threads, "nproc": os.cpu_count(),
                            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg(),
                            "quiet_thr": args.quiet_thr, "tasks": {}}
    theirs: dict[str, Any] = {"config": args.config, "threads": args.threads, "tasks": {}}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for store, name in ((ours, "speed"), (theirs, "lerobot_peer")):  # keep tasks not re-run now
        old = out_dir / f"{name}_{args.config}{suffix}.json"
        if args.merge and old.exists():
            store["tasks"] = {t: v for t, v in json.loads(old.read_text())["tasks"].items() if t not in tasks}
    if peer:
        theirs["versions"] = _spawn(peer + [args.config, "versions"], peer_env)
    for i, task in enumerate(tasks):
        runs = [("ours", me + ["--worker", args.config, task], our_env)]
        if peer and task in (*PEER_TASKS, "baseline") and not keypoints and args.config != "tiny":
            runs.append(("theirs", peer + [args.config, task, *quick], peer_env))
        for r in range(args.rounds if len(runs) == 2 else 1):
            for who, cmd, env in runs if (i + r) % 2 == 0 else runs[::-1]:  # alternate who goes first
                before = wait_for_quiet(args.max_busy, args.quiet_tries, 20.0)
                res = {**_spawn(cmd, env), "machine_before": before, "quick": args.quick}
                (ours if who == "ours" else theirs)["tasks"].setdefault(task, []).append(res)
                main_t = (res.get("step") or res.get("policy") or {}).get("median_s")
                print(f"{args.config:<22}{task:<16}{who:<7}round {r} median {main_t} s  rss "
                      f"{res.get('rss_peak_mib')} MiB  before: {before[-1]}  {res.get('error', '')[-300:]}", flush=True)
                _write(out_dir, suffix, ours, theirs, fast)
    return ours


if __name__ == "__main__":
    main()
