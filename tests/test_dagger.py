"""DAgger (rlox_dp.dagger): labelled episodes, provenance, resume between rounds, clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, load_benchmark

from rlox_dp import ConfigError, Demonstrations, Trainer
from rlox_dp.buffers import load_demonstrations, save_demonstrations
from rlox_dp.cli import main
from rlox_dp.dagger import DAgger, DAggerConfig
from rlox_dp.envs import BIMODAL_ENV_ID
from rlox_dp.experts import BimodalPointExpert, collect_demonstrations
from rlox_dp.experts.labelling import STATE_ACCESS, LabellingError, StateAccess, get_labeller

ROUNDS = {"rounds": 2, "episodes": 3, "steps_per_round": 4, "initial_steps": 4, "n_envs": 2}


@pytest.fixture(scope="module")
def bimodal_demos() -> Demonstrations:
    return collect_demonstrations(BIMODAL_ENV_ID, BimodalPointExpert(0), n_episodes=4, seed=10_000)


def make_trainer(demos, tmp_path, algorithm="bc_chunk", name="run"):
    return Trainer(algorithm, env=BIMODAL_ENV_ID, demos=demos, config=TINY[algorithm], seed=0,
                   log_dir=tmp_path / name, progress=False)


@pytest.mark.parametrize("algorithm", sorted(TINY))
def test_every_algorithm_aggregates_labelled_episodes_with_provenance(algorithm, bimodal_demos, tmp_path):
    trainer = make_trainer(bimodal_demos, tmp_path, algorithm)
    dagger = DAgger(trainer, ROUNDS, out_dir=tmp_path / "dagger")
    history = dagger.run()
    assert [row["round"] for row in history] == [0, 1, 2]
    assert trainer.state.step == 4 + 2 * 4
    assert [row["beta"] for row in history[1:]] == [0.5, 0.25]
    labels = sum(row["labels"] for row in history[1:])
    assert labels > 0 and all(row["label_cpu_s"] >= 0 and row["episodes"] == 3 for row in history[1:])
    assert all(0.0 <= row["label_actions_outside_range"] <= 1.0 for row in history[1:])

    stored = load_demonstrations(tmp_path / "dagger" / "labelled.zarr")
    provenance = stored.metadata["provenance"]
    assert len(provenance) == stored.n_episodes == labels
    assert {p["source"] for p in provenance} == {"expert_labelled"}
    assert [p["round"] for p in provenance] == sorted(p["round"] for p in provenance)
    assert {p["round"] for p in provenance} == {1, 2}
    aggregated = trainer.load_demonstrations()  # what the trainer trains on now
    assert aggregated.n_episodes == bimodal_demos.n_episodes + labels
    assert aggregated.metadata["provenance"][0] == {"source": "expert", "round": 0}

    # each labelled episode: the visited step(s) before the state, then what the expert does there
    to = trainer.config.n_obs_steps
    labeller = get_labeller(BIMODAL_ENV_ID, dagger.label_horizon)
    starts = np.concatenate([[0], stored.episode_ends[:-1]])
    for e in range(0, stored.n_episodes, 7):
        p = provenance[e]
        head = min(p["step"], to - 1)
        begin, end = starts[e] + head, stored.episode_ends[e]
        assert end - begin == p["label_length"]
        chunk = labeller.label(stored.observations["sim_state"][begin][None])[0]
        np.testing.assert_array_equal(stored.actions[begin:end], chunk.actions)
        np.testing.assert_array_equal(stored.observations["state"][begin:end], chunk.observations["state"])


def test_resume_between_rounds_equals_an_uninterrupted_run(bimodal_demos, tmp_path, monkeypatch):
    config = {**ROUNDS, "beta": 0.7, "episodes": 2, "evaluate": False}
    straight = make_trainer(bimodal_demos, tmp_path, "diffusion", "a")
    history = DAgger(straight, config, out_dir=tmp_path / "a_dagger").run()

    interrupted = make_trainer(bimodal_demos, tmp_path, "diffusion", "b")
    original = DAgger._collect

    def stop_in_round_2(self, r):
        if r == 2:
            raise KeyboardInterrupt
        return original(self, r)

    monkeypatch.setattr(DAgger, "_collect", stop_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        DAgger(interrupted, config, out_dir=tmp_path / "b_dagger").run()
    monkeypatch.setattr(DAgger, "_collect", original)
    assert json.loads((tmp_path / "b_dagger" / "dagger.json").read_text())["completed_round"] == 1

    resumed = DAgger.resume(tmp_path / "b_dagger", progress=False)
    resumed_history = resumed.run()
    final_a, final_b = straight.policy.state_dict(), resumed.trainer.policy.state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.endswith("_s") and "per_s" not in k}  # noqa: E731
                            for r in rows]
    assert untimed(resumed_history) == untimed(history)
    a = load_demonstrations(tmp_path / "a_dagger" / "labelled.zarr")
    b = load_demonstrations(tmp_path / "b_dagger" / "labelled.zarr")
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.observations["sim_state"], b.observations["sim_state"])
    assert a.metadata["provenance"] == b.metadata["provenance"]
    assert resumed.run() == resumed_history  # nothing left to do


def test_labels_collected_before_an_interruption_are_not_collected_again(bimodal_demos, tmp_path, monkeypatch):
    """Stopped while training round 2: the resumed run trains on the round's saved labels (no new
    rollouts or expert calls) and ends where an uninterrupted run does."""
    config = {**ROUNDS, "beta": 0.7, "episodes": 2, "evaluate": False}
    straight = make_trainer(bimodal_demos, tmp_path, "diffusion", "a")
    history = DAgger(straight, config, out_dir=tmp_path / "a_dagger").run()

    original_train = DAgger._train_and_save

    def stop_training_round_2(self, r, *args, **kwargs):
        if r == 2:
            raise KeyboardInterrupt
        return original_train(self, r, *args, **kwargs)

    monkeypatch.setattr(DAgger, "_train_and_save", stop_training_round_2)
    with pytest.raises(KeyboardInterrupt):
        DAgger(make_trainer(bimodal_demos, tmp_path, "diffusion", "b"), config, out_dir=tmp_path / "b_dagger").run()
    monkeypatch.setattr(DAgger, "_train_and_save", original_train)
    state = json.loads((tmp_path / "b_dagger" / "dagger.json").read_text())
    assert state["completed_round"] == 1 and state["collected"]["round"] == 2

    collect_calls = []
    monkeypatch.setattr(DAgger, "_collect", lambda self, r: collect_calls.append(r))
    resumed = DAgger.resume(tmp_path / "b_dagger", progress=False)
    resumed_history = resumed.run()
    assert collect_calls == []
    final_a, final_b = straight.policy.state_dict(), resumed.trainer.policy.state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
    assert resumed_history[2]["labels"] == history[2]["labels"] > 0
    assert "collected" not in json.loads((tmp_path / "b_dagger" / "dagger.json").read_text())


def _dagger_after_interrupted_round_0(demos, tmp_path, trained: int) -> tuple[list[dict], Trainer]:
    """One-round DAgger (round 0: 4 steps) run on a trainer checkpointed after ``trained`` steps."""
    partial = make_trainer(demos, tmp_path, "diffusion", "partial")
    partial.train(trained, evaluate=False)
    partial.save(tmp_path / "partial.safetensors")
    resumed = Trainer.load(tmp_path / "partial.safetensors", demos=demos, progress=False)
    config = {**ROUNDS, "rounds": 1, "episodes": 2, "evaluate": False}
    return DAgger(resumed, config, out_dir=tmp_path / "dagger").run(), resumed


def test_label_budget_stops_labelling_mid_round(bimodal_demos, tmp_path):
    trainer = make_trainer(bimodal_demos, tmp_path)
    dagger = DAgger(trainer, {**ROUNDS, "rounds": 3, "label_every": 1, "label_budget": 50, "evaluate": False},
                    out_dir=tmp_path / "dagger")
    history = dagger.run()
    used = sum(row.get("label_steps", 0) for row in history)
    assert 50 - dagger.labeller.horizon < used <= 50  # every whole label that fits, none beyond
    assert len(history) < 4 and history[-1]["episodes_cut_by_budget"] > 0  # stopped mid-round, no round after
    stored = load_demonstrations(tmp_path / "dagger" / "labelled.zarr")
    assert sum(p["label_length"] for p in stored.metadata["provenance"]) == used


def test_aggregating_labels_of_another_state_shape_is_refused(bimodal_demos):
    from rlox_dp.dagger_data import concat

    longer = Demonstrations({"state": np.zeros((3, 5), np.float32)}, np.zeros((3, 2), np.float32), np.array([3]))
    with pytest.raises(ValueError, match=r"observation 'state': per-step shapes differ .*\(2,\), \(5,\)"):
        concat([bimodal_demos, longer], {})


def test_round_0_continues_from_an_interrupted_trainer(bimodal_demos, tmp_path):
    """A trainer checkpointed part-way through round 0 trains only the rest of it; the round's CPU
    time is extrapolated to all its steps and marked with the step it resumed at."""
    history, resumed = _dagger_after_interrupted_round_0(bimodal_demos, tmp_path, trained=2)
    assert history[0]["step"] == 4 and history[0]["resumed_at"] == 2 and history[0]["train_cpu_s"] > 0
    assert "resumed_at" not in history[1] and resumed.state.step == 4 + 4


def test_round_0_trained_before_the_interruption_has_unknown_cpu_time(bimodal_demos, tmp_path):
    """A trainer checkpointed at round 0's last step (killed before dagger.json was written) trains
    nothing more in round 0: its CPU time is unknown (None), not the ~0 s this process spent."""
    history, _ = _dagger_after_interrupted_round_0(bimodal_demos, tmp_path, trained=4)
    assert history[0]["step"] == 4 and history[0]["resumed_at"] == 4 and history[0]["train_cpu_s"] is None
    assert history[1]["train_cpu_s"] > 0


def test_benchmark_cpu_accounting_fills_an_unmeasured_round():
    """benchmarks/dagger.py: CPU per step from round 0 when measured, else from the later rounds;
    an unmeasured round counts its steps at that rate."""
    bench = load_benchmark("dagger")
    history = [{"round": 0, "step": 100, "train_cpu_s": 50.0},
               {"round": 1, "step": 150, "train_cpu_s": 40.0, "label_cpu_s": 7.0, "rollout_cpu_s": 3.0},
               {"round": 2, "step": 200, "train_cpu_s": 60.0, "label_cpu_s": 1.0}]
    assert bench.train_cpu_per_step(history) == 0.5
    assert bench.round_cpu_s(history) == [50.0, 50.0, 61.0]
    history[0]["train_cpu_s"] = None
    assert bench.train_cpu_per_step(history) == 1.0  # (40 + 60) / (50 + 50)
    assert bench.round_cpu_s(history) == [100.0, 50.0, 61.0]
    with pytest.raises(ValueError, match="no DAgger round measured"):
        bench.train_cpu_per_step([{"round": 0, "step": 10, "train_cpu_s": None}])


def test_trainer_config_dagger_keys_run_the_same_rounds_as_dagger(bimodal_demos, tmp_path):
    """``Trainer(config={"dagger_rounds": ...}).train(steps)`` runs DAgger in ``<log_dir>/dagger``
    (round 0: ``steps``) and ends with the same weights and labels as ``DAgger(trainer, {...})``."""
    keys = {"rounds": 1, "episodes": 2, "steps_per_round": 3, "n_envs": 2, "evaluate": False}
    trainer = Trainer("bc_chunk", env=BIMODAL_ENV_ID, demos=bimodal_demos, seed=0, log_dir=tmp_path / "cfg",
                      config={**TINY["bc_chunk"], **{f"dagger_{k}": v for k, v in keys.items()}}, progress=False)
    assert trainer.dagger_config == DAggerConfig(**keys)
    metrics = trainer.train(4, evaluate=False)
    assert metrics["dagger_rounds"] == 1 and metrics["step"] == 4 + 3 and metrics["labels"] > 0
    explicit = make_trainer(bimodal_demos, tmp_path, name="explicit")
    DAgger(explicit, {**keys, "initial_steps": 4}, out_dir=tmp_path / "explicit_dagger").run()
    for a, b in zip(trainer.policy.parameters(), explicit.policy.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours = load_demonstrations(tmp_path / "cfg" / "dagger" / "labelled.zarr")
    theirs = load_demonstrations(tmp_path / "explicit_dagger" / "labelled.zarr")
    np.testing.assert_array_equal(ours.actions, theirs.actions)
    assert json.loads((tmp_path / "cfg" / "dagger" / "dagger.json").read_text())["config"]["initial_steps"] == 4
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "cfg")).Reload()  # the per-round curve
    assert [(e.step, e.value) for e in events.Scalars("dagger/labels")] == [(7, metrics["labels"])]
    assert [e.step for e in events.Scalars("dagger/train_cpu_s")] == [4, 7]


def test_trainer_config_dagger_key_errors_name_the_key(bimodal_demos, tmp_path):
    for bad, match in [({"dagger_round": 3}, r"dagger_round: unknown config key 'round'.*Did you mean 'rounds'"),
                       ({"dagger_beta": 2.0}, r"dagger_beta: config field 'beta' must be in \[0, 1\]")]:
        with pytest.raises(ConfigError, match=match):
            Trainer("bc", env=BIMODAL_ENV_ID, demos=bimodal_demos, config={**TINY["bc"], **bad},
                    log_dir=tmp_path / "r", progress=False)


def test_pusht_round_writes_the_human_dataset_layout(tmp_path):
    """PushT: labelled episodes are stored like the human zarr (data/state (N, 5)), so the PushT
    loader gives back exactly the keypoint observations the policy saw."""
    from rlox_dp.envs.pusht import load_pusht_demonstrations
    from rlox_dp.experts.labelling import PushTMPCLabeller
    from rlox_dp.experts.pusht import PushTMPCConfig

    rng = np.random.default_rng(0)
    fake = Demonstrations(observations={"state": rng.uniform(50, 450, (60, 20)).astype(np.float32)},
                          actions=rng.uniform(50, 450, (60, 2)).astype(np.float32),
                          episode_ends=np.array([30, 60]))
    trainer = Trainer("bc_chunk", env="gym_pusht/PushT-v0", demos=fake, config={**TINY["bc_chunk"], "obs": "keypoints"},
                      log_dir=tmp_path / "run", progress=False)
    labeller = PushTMPCLabeller(8, {"obs_mode": "keypoints"},
                                PushTMPCConfig(horizon=4, n_knots=2, n_samples=8, n_iterations=1, n_elites=2))
    dagger = DAgger(trainer, {"rounds": 1, "episodes": 1, "steps_per_round": 2, "initial_steps": 2,
                              "max_episode_steps": 12, "evaluate": False},
                    out_dir=tmp_path / "dagger", labeller=labeller)
    history = dagger.run()
    assert history[1]["labels"] == 3 and history[1]["env_steps"] == 12
    raw = load_demonstrations(tmp_path / "dagger" / "labelled.zarr")
    assert raw.observations["state"].shape[1] == 5 and raw.observations["state"].dtype == np.float64
    loaded = load_pusht_demonstrations(tmp_path / "dagger" / "labelled.zarr", "keypoints")
    np.testing.assert_array_equal(loaded.observations["state"], dagger.labelled.observations["state"])
    np.testing.assert_array_equal(loaded.actions, dagger.labelled.actions)


def test_clear_errors(bimodal_demos, tmp_path):
    with pytest.raises(ConfigError, match="'beta' must be in"):
        DAggerConfig(beta=1.5)
    with pytest.raises(ConfigError, match="Did you mean 'rounds'"):
        DAggerConfig.from_dict({"round": 3})
    trainer = make_trainer(bimodal_demos, tmp_path)
    DAgger(trainer, {**ROUNDS, "rounds": 1, "steps_per_round": 0}, out_dir=tmp_path / "d").run()
    with pytest.raises(FileExistsError, match="DAgger.resume"):
        DAgger(trainer, ROUNDS, out_dir=tmp_path / "d")

    # a restore that is not exact is caught by comparing the restored observation
    labeller = get_labeller(BIMODAL_ENV_ID, 8)
    exact = STATE_ACCESS.get(BIMODAL_ENV_ID)
    labeller.access = StateAccess(exact.capture, lambda env, s: exact.restore(env, s + 1e-3), exact.observe)
    with pytest.raises(LabellingError, match="did not reproduce the observation 'state'"):
        DAgger(make_trainer(bimodal_demos, tmp_path, name="other"), ROUNDS, out_dir=tmp_path / "e",
               labeller=labeller).run()


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs mujoco")
def test_env_without_expert_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    demos = Demonstrations(observations={"state": rng.normal(size=(40, 4))},
                           actions=rng.uniform(-1, 1, (40, 1)).astype(np.float32), episode_ends=np.array([40]))
    trainer = Trainer("bc", env="InvertedPendulum-v5", demos=demos, config=TINY["bc"], log_dir=tmp_path / "r",
                      progress=False)
    with pytest.raises(LabellingError, match="'InvertedPendulum-v5' has no expert that can label"):
        DAgger(trainer, ROUNDS)


def test_cli_dagger_and_resume(bimodal_demos, tmp_path, capsys):
    demos = save_demonstrations(bimodal_demos, tmp_path / "demos.npz")
    tiny = [f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}" for k, v in TINY["bc"].items()]
    args = ["dagger", "bc", "--env", BIMODAL_ENV_ID, "--demos", str(demos), "--config", *tiny,
            "--dagger", "rounds=1", "episodes=2", "steps_per_round=3", "initial_steps=3",
            "--log-dir", str(tmp_path / "run"), "--out-dir", str(tmp_path / "dag"), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "DAgger round 1" in out and "label_cpu_s" in out
    assert main(["dagger", "--resume", str(tmp_path / "dag"), "--no-progress"]) == 0
    assert main(["dagger", "--resume", str(tmp_path / "dag"), "--dagger", "rounds=3"]) == 2
    assert "--resume continues" in capsys.readouterr().err
    assert main(args) == 2  # the out dir holds a run


ZARR = os.environ.get("RLOX_DP_PUSHT_ZARR")


@pytest.mark.slow  # about 10 s of CPU, most of it loading the human data twice
@pytest.mark.skipif(not ZARR or not Path(ZARR).exists(), reason="set RLOX_DP_PUSHT_ZARR to the human PushT zarr")
def test_benchmark_quick_pusht_and_resume(tmp_path):
    """benchmarks/dagger.py --quick: DAgger vs human-only at equal CPU time, JSON + PNG; a second
    call reads the finished runs back instead of training again."""
    bench = load_benchmark("dagger")
    args = ["--quick", "--only", "pusht", "--demos", ZARR, "--out", str(tmp_path / "out"),
            "--work-dir", str(tmp_path / "work"), "--no-progress"]
    result = bench.main(args)["pusht"]
    summary = result["summary"]
    assert set(summary) == {"human/preset", "dagger/preset"} and summary["dagger/preset"]["uses_expert"]
    dagger, human = result["runs"]
    assert human["steps"] == max(1, round(dagger["total_cpu_s"] / dagger["cpu_per_step_s"]))
    assert [row["round"] for row in dagger["history"]] == [0, 1] and dagger["history"][1]["labels"] > 0
    curve = result["curve"]  # pooled over seeds, per round
    assert [row["round"] for row in curve] == [0, 1] and curve[1]["labels"] == dagger["history"][1]["labels"]
    assert curve[1]["success_rate"]["mean"] == dagger["history"][1]["eval/success_rate"]
    assert 0 < curve[0]["cpu_h"] < curve[1]["cpu_h"] <= dagger["total_cpu_s"] / 3600 + 1e-9
    stats = result["action_statistics"]  # do the labels look like the human data?
    assert stats["human"]["steps"] == 25_650
    assert stats["expert_labelled"]["steps"] >= dagger["history"][1]["label_steps"] > 0  # + the visited heads
    assert all(0 < row[k] < 512 for row in stats.values() for k in ("action_to_agent_px_median", "action_step_px_median"))
    assert (tmp_path / "out" / "dagger_pusht.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "dagger_pusht.json").read_text())["runs"] == result["runs"]
    assert bench.main(args)["pusht"]["runs"] == result["runs"]  # finished runs are reused


@pytest.mark.skipif(importlib.util.find_spec("mujoco") is None, reason="needs mujoco")
def test_benchmark_quick_idp_equal_label_budget(tmp_path):
    """benchmarks/dagger.py --quick --only idp (an untrained SAC stands in for the expert): clean,
    DART and DAgger runs, DAgger stopping at the expert-label budget."""
    bench = load_benchmark("dagger")
    result = bench.main(["--quick", "--only", "idp", "--out", str(tmp_path / "out"),
                         "--work-dir", str(tmp_path / "work"), "--no-progress"])["idp"]
    assert [r["variant"] for r in result["runs"]] == ["clean", "dart", "dagger"]
    dagger = result["runs"][2]
    state = json.loads((tmp_path / "work" / "idp_dagger_0" / "dagger.json").read_text())
    provenance = load_demonstrations(tmp_path / "work" / "idp_dagger_0" / "labelled.zarr").metadata["provenance"]
    horizon = max(p["label_length"] for p in provenance)  # shorter where the env terminated
    assert sum(p["label_length"] for p in provenance) == sum(r.get("label_steps", 0) for r in state["history"])
    assert result["label_budget"] - horizon < dagger["expert_labels"] <= result["label_budget"]  # equal budget
    assert (tmp_path / "out" / "dagger_idp.json").is_file()
