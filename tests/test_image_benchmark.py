"""benchmarks/pusht.py: the learning curve written as it grows, resume, data time; from keypoints
(default suite) and from images with the compact encoder (slow: image episodes are ~10x dearer;
the default suite runs the image benchmark once, in test_benchmark_pusht.py)."""

from __future__ import annotations

import json
import os

import pytest
from helpers import load_benchmark

ZARR = os.environ.get("RLOX_DP_PUSHT_ZARR")
pytestmark = pytest.mark.skipif(not ZARR, reason="RLOX_DP_PUSHT_ZARR not set")


@pytest.mark.parametrize("obs", ["keypoints", pytest.param("image", marks=pytest.mark.slow)])
def test_run_writes_its_curve_as_it_goes_and_resumes(obs, tmp_path, monkeypatch):
    bench = load_benchmark("pusht")
    written = []
    real_write = bench.write

    def spy(result, out, tag, quiet=False):
        written.append(json.loads(json.dumps(result, default=str)))
        real_write(result, out, tag, quiet)

    monkeypatch.setattr(bench, "write", spy)
    common = ["--demos", ZARR, "--quick", "--obs", obs, "--variants", "diffusion", "--episodes", "2",
              "--curve-episodes", "1", "--eval-every", "2", "--run-dir", str(tmp_path / "runs"),
              "--out", str(tmp_path)]
    first = bench.main([*common, "--steps", "4"])
    in_loop = 1 if obs == "image" else 2  # --curve-episodes applies to image runs only
    # the in-loop evaluation at step 2 was written before training went on (a killed run keeps it)
    partial = written[0]["runs"][0]
    assert partial["complete"] is False and partial["steps"] == 2
    assert [(c["step"], c["episodes"]) for c in partial["curve"]] == [(2, in_loop)]
    run = first["runs"][0]
    assert run["complete"] is True and run["steps"] == 4 and len(run["scores"]) == 2
    assert [(c["step"], c["episodes"]) for c in run["curve"]] == [(2, in_loop), (4, 2)]
    if obs == "image":
        assert run["config"]["vision_backbone"] == "compact"
    assert run["data_time_per_batch_s"] > 0 and 0 < run["data_fraction_of_step"] < 1
    run_dir = tmp_path / "runs" / "diffusion-0"
    assert (run_dir / "best.safetensors").exists()
    assert (run_dir / "checkpoints" / "last.safetensors").exists()
    # --resume: the finished run is kept as it is; a longer budget continues from step 4
    again = bench.main([*common, "--steps", "4", "--resume"])
    assert again["runs"][0]["curve"] == run["curve"]
    longer = bench.main([*common, "--steps", "6", "--resume"])
    resumed = longer["runs"][0]
    assert resumed["steps"] == 6 and [c["step"] for c in resumed["curve"]] == [2, 4, 6]
    assert resumed["train_time_s"] > run["train_time_s"]


def test_resume_needs_a_run_dir(capsys):
    bench = load_benchmark("pusht")
    with pytest.raises(SystemExit):
        bench.parse_args(["--demos", ZARR, "--resume"])
    assert "--resume needs --run-dir" in capsys.readouterr().err
