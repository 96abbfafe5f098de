"""Smoke tests of benchmarks/bimodal_fewstep.py and benchmarks/pusht_fewstep.py (--quick, in process)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import load_benchmark


def test_bimodal_quick_run_covers_every_model_and_setting(tmp_path):
    bench = load_benchmark("bimodal_fewstep")
    returned = bench.main(["--quick", "--out", str(tmp_path), "--keep", str(tmp_path / "ckpt")])
    result = json.loads((tmp_path / "bimodal_fewstep.json").read_text())
    assert result == json.loads(json.dumps(returned))
    assert set(result["training"]) == {"diffusion", "flow", "consistency"}
    assert result["training"]["consistency"]["teacher"].endswith("diffusion-0.safetensors")
    assert (tmp_path / "ckpt" / "consistency-0.safetensors").exists()
    expected = {(m, s, n) for m, settings in bench.SETTINGS.items() for s, n, _ in settings
                if n <= 3 or s == "DDPM"}
    got = {(r["model"], r["sampler"], r["num_inference_steps"] if r["sampler"] != "DDPM" else 100)
           for r in result["rows"]}
    assert got == expected
    for r in result["rows"]:
        assert r["left"] + r["right"] == round(r["success_rate"]["mean"] * result["episodes"])
        assert r["network_evaluations"] == (2 * r["num_inference_steps"] - 1 if r["sampler"] == "Heun"
                                            else r["num_inference_steps"])


@pytest.mark.skipif(not os.environ.get("RLOX_DP_PUSHT_ZARR"), reason="needs $RLOX_DP_PUSHT_ZARR")
@pytest.mark.slow
def test_pusht_quick_run_writes_json_and_png(tmp_path):
    bench = load_benchmark("pusht_fewstep")
    bench.main(["--quick", "--seeds", "1", "--models", "diffusion,consistency",
                "--keep", str(tmp_path / "ckpt"), "--out", str(tmp_path)])
    result = json.loads((tmp_path / "pusht_fewstep.json").read_text())
    assert {p["model"] for p in result["pooled"]} == {"diffusion", "consistency"}
    assert all(p["eager_ms"] > 0 and p["compiled_ms"] is None for p in result["pooled"])
    assert (tmp_path / "pusht_fewstep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not os.environ.get("RLOX_DP_PUSHT_ZARR"), reason="needs $RLOX_DP_PUSHT_ZARR")
def test_pusht_evaluation_resumes_from_cached_rows(tmp_path, monkeypatch):
    """Scores are cached per setting and reused; a retrained checkpoint (new digest) is evaluated
    again; ``--score-only`` leaves the latencies to a later run, which only times."""
    from rlox_dp import Trainer

    bench = load_benchmark("pusht_fewstep")
    monkeypatch.setitem(bench.SETTINGS, "diffusion", [("DDIM", 1), ("DDIM", 2)])
    keep = tmp_path / "ckpt"
    argv = ["--quick", "--seeds", "1", "--models", "diffusion", "--keep", str(keep), "--out", str(tmp_path)]
    calls = []
    evaluate = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *a, **k: calls.append(a) or evaluate(self, *a, **k))

    scored = bench.main([*argv, "--score-only"])
    assert len(calls) == 2 and "pooled" not in scored
    assert all("eager_ms" not in r and 0 <= r["score"] <= 1 for r in scored["rows"])
    result = bench.main(argv)  # scores reused, only the chunks are timed
    assert len(calls) == 2
    assert [r["scores"] for r in result["rows"]] == [r["scores"] for r in scored["rows"]]
    assert all(r["eager_ms"] > 0 for r in result["rows"])
    again = bench.main(argv)  # nothing left to measure: the same rows
    assert len(calls) == 2 and again["rows"] == result["rows"]
    other_threads = bench.main([*argv, "--threads", "1"])  # timings with 2 threads are not reused
    assert len(calls) == 2 and all(r["latency_threads"] == 1 for r in other_threads["rows"])
    assert [r["scores"] for r in other_threads["rows"]] == [r["scores"] for r in result["rows"]]

    ckpt = keep / "diffusion-0.safetensors"
    trainer = Trainer.load(ckpt, demos=os.environ["RLOX_DP_PUSHT_ZARR"], device="cpu", progress=False)
    trainer.train(trainer.state.step + 1, evaluate=False)
    trainer.save(ckpt)  # other weights: the cached rows no longer apply
    bench.main(argv)
    assert len(calls) == 4


@pytest.mark.skipif(not os.environ.get("RLOX_DP_PUSHT_ZARR"), reason="needs $RLOX_DP_PUSHT_ZARR")
def test_pusht_latency_is_timed_on_the_first_seeds_and_scores_pool_all(tmp_path, monkeypatch):
    bench = load_benchmark("pusht_fewstep")
    monkeypatch.setitem(bench.SETTINGS, "diffusion", [("DDIM", 1)])
    argv = ["--quick", "--seeds", "2", "--models", "diffusion", "--keep", str(tmp_path / "ckpt"), "--out", str(tmp_path)]
    result = bench.main(argv)
    assert ["eager_ms" in r for r in result["rows"]] == [True, False]
    (pooled,) = result["pooled"]
    assert pooled["seeds"] == [0, 1] and pooled["latency_seeds"] == [0]
    assert pooled["eager_ms"] == result["rows"][0]["eager_ms"] and pooled["score"]["n"] == 4
    both = bench.main([*argv, "--latency-seeds", "2"])  # seed 1 timed now, seed 0's timing reused
    assert both["pooled"][0]["latency_seeds"] == [0, 1] and both["rows"][0] == result["rows"][0]
    with pytest.raises(SystemExit):
        bench.main([*argv, "--latency-seeds", "0"])
