"""benchmarks/pusht.py: a smoke run per observation mode, merging result files; pusht_fastest.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from helpers import load_benchmark

ZARR = os.environ.get("RLOX_DP_PUSHT_ZARR")
needs_zarr = pytest.mark.skipif(not ZARR or not Path(ZARR).exists(),
                                reason="set RLOX_DP_PUSHT_ZARR to the PushT replay zarr")


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("pusht")


def test_missing_dataset_is_a_clear_error(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RLOX_DP_PUSHT_ZARR", raising=False)
    with pytest.raises(SystemExit):
        bench.parse_args(["--demos", str(tmp_path / "nope.zarr")])
    assert "--demos: the PushT zarr was not found" in capsys.readouterr().err


@needs_zarr
def test_quick_keypoints_run_and_merge(bench, tmp_path):
    common = ["--demos", ZARR, "--quick", "--episodes", "2", "--out", str(tmp_path),
              "--variants", "diffusion,bc", "--eval-every", "2", "--steps", "4"]
    first = bench.main([*common, "--tag", "_a"])
    assert set(first["summary"]) == {"diffusion", "bc"}
    run = first["runs"][0]
    assert run["steps"] == 4 and len(run["scores"]) == 2
    assert [c["step"] for c in run["curve"]] == [2, 4]
    assert all(0.0 <= s <= 1.0 for s in run["scores"])
    assert run["config"]["total_steps"] == 4 and run["config"]["eval_every"] == 2
    assert (tmp_path / "pusht_keypoints_a.png").stat().st_size > 0
    saved = json.loads((tmp_path / "pusht_keypoints_a.json").read_text())
    assert saved["summary"]["bc"]["score"]["n"] == 2
    bench.main([*common, "--first-seed", "1", "--variants", "diffusion", "--tag", "_b"])
    merged = bench.main(["--merge", str(tmp_path / "pusht_keypoints_a.json"),
                         str(tmp_path / "pusht_keypoints_b.json"), "--out", str(tmp_path)])
    assert merged["seeds"] == [0, 1]
    assert merged["summary"]["diffusion"]["seeds"] == 2 and merged["summary"]["diffusion"]["episodes"] == 4
    assert merged["summary"]["bc"]["seeds"] == 1
    with pytest.raises(ValueError, match=r"runs \(variant, seed\).*more than one file"):
        bench.merge([str(tmp_path / "pusht_keypoints_a.json")] * 2)


@needs_zarr
def test_quick_image_run(bench, tmp_path):
    result = bench.main(["--demos", ZARR, "--quick", "--obs", "image", "--episodes", "1",
                         "--variants", "diffusion", "--out", str(tmp_path), "--videos", "1"])
    videos = list((tmp_path / "pusht_videos" / "diffusion-0").iterdir())
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    run = result["runs"][0]
    assert tuple(run["config"]["crop_shape"]) == (84, 84) and run["steps"] == bench.QUICK_STEPS
    assert 0.0 <= run["score"] <= 1.0 and math.isfinite(run["final_loss"])


def _tiny_pusht_checkpoint(tmp_path):
    from rlox_dp import Trainer

    config = {"obs": "keypoints", "down_dims": [16, 32], "n_groups": 4, "diffusion_step_embed_dim": 16,
              "num_train_timesteps": 10, "batch_size": 8, "lr_warmup_steps": 1}
    trainer = Trainer("diffusion", env="gym_pusht/PushT-v0", demos=ZARR, config=config, device="cpu",
                      log_dir=tmp_path / "run", progress=False, preset=False)
    trainer.train(2, evaluate=False)
    return trainer.save(tmp_path / "tiny.safetensors")


@needs_zarr
def test_fastest_setting_sweep(tmp_path):
    fastest = load_benchmark("pusht_fastest")
    ckpt = _tiny_pusht_checkpoint(tmp_path)
    result = fastest.main([str(ckpt), "--samplers", "DDPM:all,DDIM:2", "--episodes", "2",
                           "--eval-envs", "2", "--repeats", "3", "--warmup", "1", "--threads", "1",
                           "--out", str(tmp_path)])
    rows = result["rows"]
    assert [r["sampler"] for r in rows] == ["DDPM10", "DDIM2"]
    assert all(r["chunk_latency_ms"] > 0 and 0 <= r["score"] <= 1 for r in rows)
    # fewer denoiser calls are faster
    assert rows[1]["chunk_latency"]["min_s"] < rows[0]["chunk_latency"]["min_s"]
    best = max(r["score"] for r in rows)
    chosen = result["recommended"]
    assert chosen["score"] >= best - 0.02
    assert chosen["chunk_latency_ms"] == min(r["chunk_latency_ms"] for r in rows if r["score"] >= best - 0.02)
    pooled = {g["sampler"]: g for g in result["pooled"]}
    for r in rows:  # one checkpoint: the pooled summary is the row, with intervals
        g = pooled[r["sampler"]]
        assert g["checkpoints"] == [ckpt.name] and g["score"]["n"] == 2
        assert g["score"]["mean"] == pytest.approx(r["score"])
        assert g["success_rate"]["mean"] == pytest.approx(r["success_rate"])
        assert g["score"]["low"] <= g["score"]["mean"] <= g["score"]["high"]
    with pytest.raises(ValueError, match="DDIM:10"):
        fastest.parse_samplers("DDIM-10")
    again = fastest.main([str(ckpt), "--remeasure-latency", str(tmp_path / "pusht_fastest.json"),
                          "--repeats", "3", "--warmup", "1", "--threads", "1", "--rounds", "2",
                          "--only", ckpt.name, "--out", str(tmp_path / "re")])
    assert [r["score"] for r in again["rows"]] == [r["score"] for r in rows]  # scores kept
    for r in again["rows"]:  # two alternating rounds of 3 timed chunks, median of round medians
        latency = r["chunk_latency"]
        assert latency["n"] == 6 and len(latency["round_medians_s"]) == 2
        assert latency["median_s"] == pytest.approx(sum(latency["round_medians_s"]) / 2)
    assert again["latency_date"]
    with pytest.raises(SystemExit, match="--only"):
        fastest.main([str(ckpt), "--remeasure-latency", str(tmp_path / "pusht_fastest.json"),
                      "--only", "other.safetensors", "--out", str(tmp_path / "re")])
    combined = fastest.main([str(ckpt), "--samplers", "DDIM:1", "--episodes", "2", "--eval-envs", "2",
                             "--repeats", "3", "--warmup", "1", "--threads", "1", "--out",
                             str(tmp_path / "c"), "--include", str(tmp_path / "pusht_fastest.json"),
                             "--name", "combined"])
    assert [r["sampler"] for r in combined["rows"]] == ["DDIM1", "DDPM10", "DDIM2"]
    assert (tmp_path / "c" / "combined.json").exists()


@needs_zarr
@pytest.mark.slow
def test_fastest_remeasure_compiled(tmp_path):
    """``--compile`` times the chunks again with compiled networks (checked against eager first)."""
    fastest = load_benchmark("pusht_fastest")
    ckpt = _tiny_pusht_checkpoint(tmp_path)
    fastest.main([str(ckpt), "--samplers", "DDIM:3,DDIM:2", "--episodes", "2", "--eval-envs", "2",
                  "--repeats", "3", "--warmup", "1", "--threads", "1", "--out", str(tmp_path)])
    again = fastest.main([str(ckpt), "--remeasure-latency", str(tmp_path / "pusht_fastest.json"), "--compile",
                          "--repeats", "5", "--warmup", "2", "--threads", "1", "--out", str(tmp_path / "re")])
    assert all(r["chunk_latency_compiled_ms"] > 0 and r["chunk_latency_compiled"]["n"] == 5
               for r in again["rows"])
    assert "chunk_latency_compiled_ms" in again["recommended"]


def test_plot_draws_every_variant(bench, tmp_path):
    """Every variant the benchmark offers has a colour and a label in the learning-curve plot."""
    runs = [{"variant": v, "seed": 0, "scores": [0.5, 0.7], "successes": [0, 1], "score": 0.6,
             "success_rate": 0.5, "train_time_s": 1.0, "steps": 2, "n_parameters": 10,
             "curve": [{"step": 1, "score": 0.3}, {"step": 2, "score": 0.6}]} for v in bench.LABELS]
    result = {"summary": bench.summarize(runs, list(bench.LABELS)), "runs": runs, "obs": "keypoints",
              "steps": 2, "seeds": [0], "episodes": 2}
    bench.plot(tmp_path / "all.png", result)
    assert (tmp_path / "all.png").stat().st_size > 0
