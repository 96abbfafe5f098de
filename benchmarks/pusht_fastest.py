"""The fastest PushT keypoints policy within a score tolerance of the best one.

Loads trained PushT checkpoints (e.g. those ``benchmarks/pusht.py --keep-checkpoints DIR`` keeps:
different denoisers and widths), and for each one and each sampler setting (DDPM over all steps,
DDIM with 10, 5, 3, 2, 1 steps by default) measures

* the paper's score and success rate on the same held-out episodes as ``benchmarks/pusht.py``
  (reset seeds ``--eval-seed ..``, 300 steps, ``--eval-envs`` vectorized envs), with the wall
  time of the whole evaluation, and
* the latency of one action chunk for one observation window (batch 1, ``predict_action_chunk``:
  normalize, encode, denoise, unnormalize), median over repeats after warm-up, with
  ``--threads`` torch threads.

The recommended setting is the fastest (lowest chunk latency) whose mean score is within
``--tolerance`` (default 0.02) of the best mean score measured. Writes
``<out>/<name>.json`` (``--name``, default ``pusht_fastest``) and prints a table. Checkpoints of
the same network trained with different seeds are also pooled per sampler (``"pooled"``: score
with a 95 % t interval and success rate with a 95 % Wilson interval over all their episodes), e.g.
to compare samplers on the final checkpoints of ``benchmarks/pusht.py`` runs. Chunk latencies are sensitive to other load on the
machine: ``--remeasure-latency JSON`` re-times the chunks of an earlier result (same checkpoints
and samplers, scores kept) and recomputes the recommendation, e.g. on an idle machine; with
``--compile`` it also times them compiled by ``torch.compile`` (the recommendation stays based on
the eager latency), ``--rounds R`` alternates R timing rounds over the settings, ``--only NAME``
re-times one checkpoint's rows.

    python benchmarks/pusht_fastest.py runs/ckpt/diffusion-0.safetensors runs/ckpt/diffusion_mlp-0.safetensors
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlox_dp import Trainer
from rlox_dp.envs import make_env
from rlox_dp.envs.pusht import PUSHT_ENV_ID

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intervals import mean_interval, wilson_interval  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_samplers(text: str) -> list[tuple[str, int | None]]:
    """``"DDPM:all,DDIM:10"`` -> ``[("DDPM", None), ("DDIM", 10)]`` (None: all train steps)."""
    out: list[tuple[str, int | None]] = []
    for item in text.split(","):
        kind, _, steps = item.strip().partition(":")
        if kind.upper() not in ("DDPM", "DDIM") or not (steps == "all" or steps.isdigit()):
            raise ValueError(f"--samplers: expected items like DDPM:all or DDIM:10, got {item!r}")
        out.append((kind.upper(), None if steps == "all" else int(steps)))
    return out


def observation_window(trainer: Trainer, seed: int = 0) -> dict[str, torch.Tensor]:
    """A real first observation of the env, edge-replicated over ``n_obs_steps``: ``(1, T_o, ...)``."""
    env = make_env(trainer.env_id, env_kwargs=trainer.env_kwargs)
    obs, _ = env.reset(seed=seed)
    env.close()
    n = trainer.config.n_obs_steps
    return {k: torch.as_tensor(np.asarray(v))[None, None].repeat(1, n, *[1] * np.ndim(v))
            for k, v in obs.items()}


def chunk_latency(policy: Any, window: dict[str, torch.Tensor], repeats: int, warmup: int) -> dict[str, float]:
    """Median / min / 90th-percentile seconds of ``policy.predict_action_chunk(window)``."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(warmup):
            policy.predict_action_chunk(window, gen)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.predict_action_chunk(window, gen)
            times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times),
            "p90_s": float(np.percentile(times, 90)), "n": repeats}


def measure(path: str, samplers: list[tuple[str, int | None]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Score, success, eval time and chunk latency of checkpoint ``path`` under each sampler."""
    trainer = Trainer.load(path, device="cpu", progress=False)
    policy = trainer.eval_policy
    policy.eval()
    window = observation_window(trainer)
    cfg = trainer.config
    rows = []
    for kind, steps in samplers:
        steps = steps if steps is not None else cfg.num_train_timesteps
        policy.configure_inference(kind, steps)
        latency = chunk_latency(policy, window, args.repeats, args.warmup)
        summary = trainer.evaluate(args.episodes, args.eval_envs, seed=args.eval_seed)
        result = trainer.last_eval
        rows.append({
            "checkpoint": Path(path).name, "denoiser": cfg.denoiser,
            "down_dims": list(cfg.down_dims) if cfg.denoiser == "unet" else None,
            "hidden_dim": cfg.hidden_dim if cfg.denoiser == "mlp" else None,
            "horizon": cfg.horizon, "n_action_steps": cfg.n_action_steps,
            "n_parameters": sum(p.numel() for p in policy.parameters()),
            "sampler": f"{kind}{steps}", "num_inference_steps": steps,
            "score": summary["eval/score_mean"], "success_rate": summary["eval/success_rate"],
            "scores": result.scores.tolist(), "eval_time_s": result.wall_time_s,
            "eval_env_steps_per_s": summary["eval/env_steps_per_s"],
            "chunk_latency_ms": 1000 * latency["median_s"], "chunk_latency": latency,
        })
        print(f"{Path(path).name:32s} {kind}{steps:<4d} score {rows[-1]['score']:.3f} success "
              f"{rows[-1]['success_rate']:.2f} chunk {rows[-1]['chunk_latency_ms']:.2f} ms "
              f"eval {result.wall_time_s:.0f} s", flush=True)
    return rows


def recommend(rows: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """The lowest-latency row whose score is within ``tolerance`` of the best score."""
    best = max(r["score"] for r in rows)
    eligible = [r for r in rows if r["score"] >= best - tolerance]
    return min(eligible, key=lambda r: r["chunk_latency_ms"])


def pooled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the same network and sampler (e.g. several training seeds) pooled over episodes."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["denoiser"], str(r["down_dims"]), r["hidden_dim"], r["horizon"], r["sampler"])
        groups.setdefault(key, []).append(r)
    out = []
    for members in groups.values():
        scores = np.concatenate([np.asarray(r["scores"], dtype=float) for r in members])
        successes = sum(round(r["success_rate"] * len(r["scores"])) for r in members)
        first = members[0]
        out.append({
            **{k: first[k] for k in ("denoiser", "down_dims", "hidden_dim", "horizon", "sampler")},
            "checkpoints": [r["checkpoint"] for r in members],
            "score_per_checkpoint": [r["score"] for r in members],
            "success_per_checkpoint": [r["success_rate"] for r in members],
            "score": mean_interval(scores), "success_rate": wilson_interval(successes, len(scores)),
        })
    return out


def _load_policy(path: str) -> tuple[Trainer, Any]:
    trainer = Trainer.load(path, device="cpu", progress=False)
    policy = trainer.eval_policy
    policy.eval()
    policy.requires_grad_(False)
    return trainer, policy


def _rounds_latency(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """Pool :func:`chunk_latency` results of several rounds: median of the round medians."""
    medians = [r["median_s"] for r in rounds]
    return {"median_s": statistics.median(medians), "min_s": min(r["min_s"] for r in rounds),
            "p90_s": statistics.median(r["p90_s"] for r in rounds),
            "n": sum(r["n"] for r in rounds), "round_medians_s": medians}


def remeasure(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Re-time the chunk latency of the rows of the result at ``path``; rewrite the recommendation.

    The checkpoints are looked up by file name in ``args.checkpoints`` (their directory may differ);
    ``--only NAME ...`` re-times only those checkpoints' rows and keeps the others. With
    ``--rounds R`` every setting is timed in R rounds that alternate over the settings (and, with
    ``--compile``, between eager and compiled), and reports the median of the round medians: on a
    machine whose speed drifts, each setting then sees the same slow and fast periods.
    """
    result = json.loads(path.read_text())
    by_name = {Path(p).name: p for p in args.checkpoints}
    names = list(dict.fromkeys(r["checkpoint"] for r in result["rows"]))
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            raise SystemExit(f"--only: {unknown} are not checkpoints of {path}")
        names = [n for n in names if n in args.only]
    missing = sorted(set(names) - set(by_name))
    if missing:
        raise SystemExit(f"--remeasure-latency: pass the checkpoints {missing} as arguments")
    torch.set_num_threads(args.threads)
    for name in names:
        trainer, policy = _load_policy(by_name[name])
        window = observation_window(trainer)
        rows = [r for r in result["rows"] if r["checkpoint"] == name]
        variants = {"": policy}
        if args.compile:
            # The same checkpoint compiled (torch.compile, inductor: the networks, and the whole
            # denoising loop for few-step samplers); each setting's chunk is checked against the
            # eager one before timing.
            compiled = _load_policy(by_name[name])[1]
            compiled.compile_networks()
            variants["_compiled"] = compiled
            for row in rows:
                for p in variants.values():
                    p.configure_inference(row["sampler"][:4], row["num_inference_steps"])
                with torch.no_grad():
                    a, b = (p.predict_action_chunk(window, torch.Generator().manual_seed(0))
                            for p in variants.values())
                if not torch.allclose(a, b, atol=1e-3):
                    raise SystemExit(f"{name} {row['sampler']}: compiled and eager chunks differ by "
                                     f"{(a - b).abs().max().item():.2e}")
        timings: dict[tuple[int, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for i, row in enumerate(rows):
                for suffix, p in variants.items():
                    p.configure_inference(row["sampler"][:4], row["num_inference_steps"])
                    timings.setdefault((i, suffix), []).append(
                        chunk_latency(p, window, args.repeats, args.warmup))
        for (i, suffix), rounds in timings.items():
            row = rows[i]
            row[f"chunk_latency{suffix}"] = _rounds_latency(rounds)
            row[f"chunk_latency{suffix}_ms"] = 1000 * row[f"chunk_latency{suffix}"]["median_s"]
            print(f"{name:32s} {row['sampler']:8s} chunk {row[f'chunk_latency{suffix}_ms']:.2f} ms"
                  f"{' (compiled)' if suffix else ''}", flush=True)
    choice = recommend(result["rows"], result["tolerance"])
    result.update(threads=args.threads, latency_date=time.strftime("%Y-%m-%d %H:%M"),
                  recommended={k: v for k, v in choice.items()
                               if k not in ("scores", "chunk_latency", "chunk_latency_compiled")})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    compiled = (f", {choice['chunk_latency_compiled_ms']:.2f} ms compiled"
                if "chunk_latency_compiled_ms" in choice else "")
    print(f"recommended: {choice['checkpoint']} {choice['sampler']} score {choice['score']:.3f}, "
          f"chunk {choice['chunk_latency_ms']:.2f} ms{compiled} ({args.threads} threads)")
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep; returns the JSON-able result also written to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", help="PushT keypoints checkpoints (.safetensors)")
    parser.add_argument("--samplers", default="DDPM:all,DDIM:10,DDIM:5,DDIM:3,DDIM:2,DDIM:1",
                        help="comma list of DDPM:<steps|all> / DDIM:<steps>")
    parser.add_argument("--episodes", type=int, default=50, help="held-out episodes")
    parser.add_argument("--eval-envs", type=int, default=50, help="vectorized envs")
    parser.add_argument("--eval-seed", type=int, default=0, help="first held-out reset seed")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--repeats", type=int, default=200, help="timed chunks per setting")
    parser.add_argument("--warmup", type=int, default=20, help="untimed chunks first")
    parser.add_argument("--tolerance", type=float, default=0.02, help="score tolerance")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    parser.add_argument("--name", default="pusht_fastest", help="result file name, without .json")
    parser.add_argument("--include", nargs="+", default=[], metavar="JSON",
                        help="also rank the rows of these earlier results (same eval protocol)")
    parser.add_argument("--remeasure-latency", default=None, metavar="JSON",
                        help="re-time the chunks of this earlier result; no evaluation")
    parser.add_argument("--only", nargs="+", default=None, metavar="NAME",
                        help="with --remeasure-latency: re-time only these checkpoints (file names)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --remeasure-latency: alternating timing rounds per setting")
    parser.add_argument("--compile", action="store_true",
                        help="with --remeasure-latency: also time the chunks with torch.compile'd networks")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds: expected an int >= 1, got {args.rounds}")
    if args.remeasure_latency:
        return remeasure(Path(args.remeasure_latency), args)
    try:
        samplers = parse_samplers(args.samplers)
    except ValueError as err:
        parser.error(str(err))
    for p in args.checkpoints:
        if not Path(p).exists():
            parser.error(f"checkpoints: {p!r} does not exist")
    torch.set_num_threads(args.threads)
    rows = [row for path in args.checkpoints for row in measure(path, samplers, args)]
    for earlier in args.include:
        old = json.loads(Path(earlier).read_text())
        if (old["episodes"], old["eval_seeds"][0]) != (args.episodes, args.eval_seed):
            parser.error(f"--include: {earlier} used another evaluation protocol")
        rows += [r for r in old["rows"] if (r["checkpoint"], r["sampler"]) not in
                 {(n["checkpoint"], n["sampler"]) for n in rows}]
    best = max(rows, key=lambda r: r["score"])
    choice = recommend(rows, args.tolerance)
    result = {
        "benchmark": "pusht_fastest", "env": PUSHT_ENV_ID, "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
        "python": platform.python_version(), "episodes": args.episodes, "eval_envs": args.eval_envs,
        "eval_seeds": [args.eval_seed, args.eval_seed + args.episodes - 1],
        "tolerance": args.tolerance, "best": {k: best[k] for k in ("checkpoint", "sampler", "score")},
        "recommended": {k: v for k, v in choice.items() if k not in ("scores", "chunk_latency")},
        "rows": rows, "pooled": pooled(rows),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    print(f"\nbest score {best['score']:.3f} ({best['checkpoint']}, {best['sampler']}); fastest within "
          f"{args.tolerance}: {choice['checkpoint']} {choice['sampler']} score {choice['score']:.3f}, "
          f"chunk {choice['chunk_latency_ms']:.2f} ms ({args.threads} threads), 50-episode eval "
          f"{choice['eval_time_s']:.0f} s")
    for group in result["pooled"]:
        if len(group["checkpoints"]) > 1:
            sc, su = group["score"], group["success_rate"]
            print(f"pooled {len(group['checkpoints'])} checkpoints {group['sampler']:8s} score "
                  f"{sc['mean']:.3f} [{sc['low']:.3f}, {sc['high']:.3f}] success {su['mean']:.2f} "
                  f"[{su['low']:.2f}, {su['high']:.2f}] ({sc['n']} episodes)")
    print(f"wrote {out / (args.name + '.json')}")
    return result


if __name__ == "__main__":
    main()
