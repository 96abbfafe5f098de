"""Smoke tests of benchmarks/speed.py: tiny network, few repeats, in this process (< 30 s)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import load_benchmark

FAST = {"threads": 1, "repeats": 3, "quick": True, "quiet_thr": 0.05, "quiet_wait": 0.0, "max_extra": 0}


@pytest.fixture(scope="module")
def speed():
    return load_benchmark("speed")


@pytest.mark.parametrize("cfg", ["lowdim_small", "lowdim", "image", "pusht_keypoints_fast"])
def test_configs_have_the_peer_shapes(speed, cfg):
    spec = speed.CONFIGS[cfg]
    obs = speed.OBS[spec["obs"]]
    if spec["obs"] == "keypoints":
        assert obs == {"state": (20,)}
    else:  # peer: 16-D environment state or a 96x96 image, plus a 2-D agent state
        assert obs["agent_pos"] == (2,) and len(obs) == 2
    big = (512, 1024, 2048)
    assert spec["down_dims"] == (big if cfg in ("lowdim", "image") else (256, 512, 1024))


def test_build_matches_requested_architecture(speed):
    policy, buffer = speed.build("tiny", n_episodes=3)
    cfg = policy.config
    assert (cfg.horizon, cfg.n_obs_steps, cfg.num_train_timesteps, cfg.n_action_steps) == (16, 2, 100, 8)
    assert policy.denoiser.cond_dim == 2 * 18  # T_o * (16 + 2), as LeRobot's global conditioning
    assert policy.action_dim == 2 and buffer.n_obs_steps == 2
    assert speed.count_params(policy)["total"] == sum(p.numel() for p in policy.parameters())


def test_synthetic_demos_are_pusht_shaped(speed):
    demos = speed.synthetic_demos("image", n_episodes=2)
    assert demos.observations["image"].dtype.name == "uint8"
    assert demos.observations["image"].shape[1:] == (3, 96, 96)
    assert demos.actions.shape == (demos.n_steps, 2)
    assert 0 <= demos.actions.min() and demos.actions.max() <= 512
    assert all(100 <= n <= 150 for n in demos.episode_lengths)


def test_train_task_reports_positive_timings(speed):
    torch.set_num_threads(1)
    res = speed.task_train("tiny", 4, FAST)
    assert res["step"]["n_attempts"] == 3 and res["loss_finite"]
    for key in ("median_s", "fwd_median_s", "bwd_median_s", "opt_median_s"):
        assert res["step"][key] > 0
    assert res["step"]["fwd_median_s"] + res["step"]["bwd_median_s"] <= res["step"]["max_s"] + 1e-9
    assert math.isclose(res["steps_per_s"], 1 / res["step"]["median_s"])
    assert res["sample_batch"]["median_s"] > 0 and res["trainer_step"]["median_s"] > 0
    assert res["step_foreach_adamw"]["n_attempts"] == 3 and res["steps_per_s_foreach_adamw"] > 0


def test_infer_task_runs_the_requested_sampler(speed):
    res = speed.task_infer("tiny", "DDIM", 2, FAST)
    assert res["chunk_shape"] == [1, 8, 2] and res["chunk_finite"]
    assert res["num_inference_steps"] == 2
    assert math.isclose(res["per_unet_call_ms"], 500 * res["policy"]["median_s"])


def test_run_task_rejects_unknown_task(speed):
    with pytest.raises(ValueError, match="unknown task"):
        speed.run_task("tiny", "infer_fast", FAST)


def test_ratio_direction_and_clean_repeats(speed):
    def run(key, times, foreign, rss=100.0):
        summary = {"all_s": times, "foreign_share": foreign, "cpu_s": times}
        return [{key: summary, "rss_peak_mib": rss, "params": {"total": 7}}]

    quiet = [0.0] * 4
    ours = {"train_bs8": run("step", [1.0, 1.0, 1.0, 9.0], [0, 0, 0, 0.5]),
            "infer_ddim10": run("policy", [0.5] * 4, quiet, 50.0),
            "infer_ddim5": run("policy", [0.25] * 4, quiet)}
    theirs = {"train_bs8": run("step", [2.0] * 4, quiet),
              "infer_ddim10": run("policy", [0.25, 0.25, 0.25, 0.3], [0.5, 0.5, 0.5, 0.5])}
    theirs["train_bs8"][0]["step"].pop("cpu_s")  # the peer's record: CPU from own_cores * t
    theirs["train_bs8"][0]["step"]["own_cores"] = [1.0] * 4
    out = speed.ratios(ours, theirs, "infer_ddim5")
    train = out["train_bs8"]
    assert train["speed_ratio_basis"] == "clean medians" and train["n_clean_ours"] == 3
    assert train["speed_ratio"] == 2.0  # the disturbed 9 s repeat of ours is left out
    assert train["speed_ratio_all"] == 2.0 and train["cpu_ratio"] == 2.0
    infer = out["infer_ddim10"]  # the peer has no clean repeats: fall back to the fastest ones
    assert infer["speed_ratio_basis"] == "minimum" and infer["speed_ratio"] == 0.5
    assert infer["rss_ratio"] == 2.0
    assert out["best_ours_infer_ddim5_vs_theirs_infer_ddim10"]["speed_ratio"] == 1.0
    assert "train_bs64" not in out


def test_peer_script_is_a_flag_relative_to_the_repo(speed, tmp_path):
    assert speed.PEER_SCRIPT.parts[-3:] == ("shared", "peer", "lerobot_dp_bench.py")
    assert speed.PEER_SCRIPT.parent.parent.parent == speed.RESULTS.parents[2]  # beside the checkout
    with pytest.raises(SystemExit):  # a missing peer script is refused before anything runs
        speed.main(["--peer-python", "python", "--peer-script", str(tmp_path / "missing.py"),
                    "--out-dir", str(tmp_path)])
