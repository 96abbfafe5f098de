"""Smoke test of benchmarks/multimodal.py: --quick into tmp_path, in this process (< 30 s)."""

from __future__ import annotations

import json

import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def multimodal():
    return load_benchmark("multimodal")


def test_quick_run_writes_json_and_png(multimodal, tmp_path):
    returned = multimodal.main(["--quick", "--seeds", "2", "--out", str(tmp_path),
                                "--cache-dir", str(tmp_path / "cache")])
    result = json.loads((tmp_path / "multimodal.json").read_text())
    assert result == json.loads(json.dumps(returned))
    for key in ("date", "torch", "threads", "settings", "summary", "runs", "demos", "plot"):
        assert key in result
    assert result["threads"] == 1 and result["quick"] is True and result["seeds"] == [0, 1]
    variants = set(multimodal.VARIANTS)
    assert {"bc_obs1", "bc_obs2", "bc_chunk", "diffusion"} <= variants
    assert set(result["summary"]) == set(result["settings"]) == variants
    assert len(result["runs"]) == 2 * len(variants)
    for run in result["runs"]:
        assert run["steps"] == 20 and run["train_time_s"] > 0
        assert len(run["successes"]) == len(run["returns"]) == result["episodes"] == 4
        assert 0.0 <= run["success_rate"] <= 1.0
        rates = run["success_rate"] + run["collision_rate"] + run["timeout_rate"]
        assert rates == pytest.approx(1.0)
    for s in result["summary"].values():
        assert set(s["success_rate"]) == {"mean", "std"} and s["train_time_s"]["mean"] > 0
    # every variant trained on the same demonstrations
    assert result["demos"]["left"] + result["demos"]["right"] == result["demos"]["n_episodes"] == 10
    assert result["plot"]["baseline_variant"] in ("bc_obs1", "bc_obs2", "bc_chunk")
    png = (tmp_path / "multimodal.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_steps_flag_overrides_every_budget(multimodal):
    args = multimodal.argparse.Namespace(n_demos=7, episodes=3, quick=False, steps=11)
    for variant in multimodal.VARIANTS:
        algorithm, config = multimodal.variant_config(variant, args)
        assert algorithm == multimodal.VARIANTS[variant][0]
        assert config["total_steps"] == 11 and config["n_demos"] == 7


def test_episode_side(multimodal):
    import numpy as np

    left = np.array([[0.0, -1.0], [-0.3, -0.5], [-0.1, 0.9]])
    assert multimodal.episode_side(left) == -1
    assert multimodal.episode_side(left * np.array([-1.0, 1.0])) == 1
    assert multimodal.episode_side(np.array([[0.0, -1.0], [0.0, -0.5]])) == 0
