"""Nothing lost, nothing silently wrong: one regression per item of the reliability issue (#16).

``RAISES`` is the table of bad inputs that must raise a clear error (item number, name, builder,
error type, regex the message must match); the items that need more than one assertion (run
directories, resuming, checkpoint integrity, Ctrl-C) have a test function each, named by item.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from helpers import TINY, pendulum_demos
from safetensors.torch import save as st_save

from rlox_dp import CheckpointError, ConfigError, Trainer
from rlox_dp.algorithms.base import Algorithm
from rlox_dp.buffers import load_demonstrations, save_demonstrations
from rlox_dp.checkpoint import load_checkpoint, save_checkpoint
from rlox_dp.cli import main
from rlox_dp.run_directory import RunDirectoryError
from rlox_dp.runtime import HOSTNAME, process_start_time

REPO = Path(__file__).resolve().parents[1]


def bc(tmp_path: Path, log_dir: str = "run", demos=None, **config) -> Trainer:
    return Trainer("bc", env="Pendulum-v1", config={**TINY["bc"], **config},
                   demos=demos if demos is not None else pendulum_demos(), device="cpu",
                   log_dir=tmp_path / log_dir, progress=False, preset=False)


def step_of(path: Path) -> int:
    return load_checkpoint(path)[1]["step"]


def checkpoint(tmp_path: Path, steps: int = 2) -> Path:
    trainer = bc(tmp_path, "ckpt-run")
    trainer.train(steps, evaluate=False)
    return trainer.log_dir / "checkpoints" / "last.safetensors"


def resave(path: Path, out: Path, **meta_changes) -> Path:
    """The checkpoint at ``path`` written again (valid digests) with header fields changed;
    a value of ``...`` deletes the field."""
    tensors, meta = load_checkpoint(path)
    meta = {k: v for k, v in {**meta, **meta_changes}.items() if v is not ...}
    save_checkpoint(out, tensors, meta)
    return out


def policy(tmp_path: Path) -> Algorithm:
    return bc(tmp_path, "policy").eval_policy.eval()


# -- builders of bad inputs -------------------------------------------------------------------
def zarr_with_missing_chunk(tmp):
    path = save_demonstrations(pendulum_demos(), tmp / "d.zarr")
    (path / "data" / "state" / "0.0").unlink()
    return bc(tmp, demos=str(path)).train(1)


def zarr_with_truncated_chunk(tmp):
    path = save_demonstrations(pendulum_demos(), tmp / "d.zarr")
    chunk = path / "data" / "action" / "0.0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    return load_demonstrations(path)


def garbage_npz(tmp):
    (tmp / "g.npz").write_bytes(b"this is not a zip archive")
    return load_demonstrations(tmp / "g.npz")


def npz_with_bad_metadata(tmp):
    d = pendulum_demos()
    np.savez(tmp / "m.npz", **{"obs/state": d.observations["state"]}, action=d.actions,
             episode_ends=d.episode_ends, metadata_json=np.array("{not json"))
    return load_demonstrations(tmp / "m.npz")


def directory_not_zarr(tmp):
    (tmp / "notes.zarr").mkdir()
    (tmp / "notes.zarr" / "readme.txt").write_text("hello")
    return load_demonstrations(tmp / "notes.zarr")


class NestedDictEnv(gym.Env):
    observation_space = gym.spaces.Dict({"arm": gym.spaces.Dict({"q": gym.spaces.Box(-1, 1, (2,))})})
    action_space = gym.spaces.Box(-1, 1, (1,))


gym.register("RloxDpTestNestedDict-v0", entry_point=NestedDictEnv)


def out_of_bounds_actions(tmp):
    d = pendulum_demos()
    return bc(tmp, demos=replace(d, actions=d.actions * 10.0))


def select_action(tmp, obs):
    return policy(tmp).select_action(obs)


def reset_with_wrong_mask(tmp):
    p = policy(tmp)
    p.select_action({"state": np.zeros((3, 3), np.float32)})
    p.reset(np.array([True, False]))


RAISES = [
    (3, "zarr chunk missing", zarr_with_missing_chunk, ValueError, r"array 'data/state' is incomplete: 1 of"),
    (5, "header step not an int", lambda tmp: Trainer.load(resave(checkpoint(tmp), tmp / "s.safetensors", step="abc")),
     CheckpointError, r"'step' must be a int, got 'abc'"),
    (5, "header without observation_space",
     lambda tmp: Trainer.load(resave(checkpoint(tmp), tmp / "o.safetensors", observation_space=...)),
     CheckpointError, r"no 'observation_space'"),
    (6, "non-finite observation", lambda tmp: select_action(tmp, {"state": np.array([[0.0, np.nan, 1.0]])}),
     ValueError, r"observation 'state' contains NaN or inf \(batch rows \[0\]\)"),
    (7, "ddim_eta > 1", lambda tmp:
     Trainer("diffusion", env="Pendulum-v1", config={**TINY["diffusion"], "ddim_eta": 2.0}, demos=pendulum_demos(),
             device="cpu", log_dir=tmp / "r", progress=False), ConfigError, r"'ddim_eta' must be in \[0, 1\].*got 2.0"),
    (7, "odd diffusion_step_embed_dim",
     lambda tmp: Trainer("diffusion", env="Pendulum-v1", config={**TINY["diffusion"], "diffusion_step_embed_dim": 15},
                         demos=pendulum_demos(), device="cpu", log_dir=tmp / "r", progress=False),
     ConfigError, r"'diffusion_step_embed_dim' must be even.*got 15"),
    (9, "demo actions far outside the action box", out_of_bounds_actions, ValueError,
     r"80.62% of the demonstration action values lie outside the action space of env 'Pendulum-v1'.*more than 1%"),
    (10, "total_steps float", lambda tmp: bc(tmp).train(2.7), ValueError, r"total_steps must be an int >= 1, got 2.7"),
    (10, "total_steps string", lambda tmp: bc(tmp).train("5"), ValueError, r"total_steps must be an int >= 1, got '5'"),
    (10, "n_episodes float", lambda tmp: bc(tmp).evaluate(n_episodes=2.7), ValueError,
     r"n_episodes must be an int >= 1, got 2.7"),
    (11, "eval_every without episodes", lambda tmp: bc(tmp, eval_every=5, n_eval_episodes=0), ConfigError,
     r"'n_eval_episodes' must be >= 1 when 'eval_every' > 0"),
    (11, "negative eval_seed", lambda tmp: bc(tmp, eval_seed=-1), ConfigError, r"'eval_seed' must be >= 0, got -1"),
    (12, "garbage .npz", garbage_npz, ValueError, r"g\.npz' is not a readable \.npz archive: not a zip file"),
    (12, "invalid metadata_json", npz_with_bad_metadata, ValueError, r"m\.npz'.*'metadata_json' is not valid JSON"),
    (12, "directory that is not a zarr store", directory_not_zarr, ValueError, r"notes\.zarr' is not a zarr store"),
    (12, "truncated zarr chunk", zarr_with_truncated_chunk, ValueError,
     r"cannot read array 'data/action' \(damaged or truncated data\)"),
    (12, "unknown env module", lambda tmp: Trainer("bc", env="nomodule:Foo-v0", demos=pendulum_demos()),
     ValueError, r"env 'nomodule:Foo-v0': cannot import its module.*nomodule"),
    (12, "env=None", lambda tmp: Trainer("bc", env=None, demos=pendulum_demos()), TypeError,
     r"env must be a Gymnasium env id string.*got None"),
    (12, "nested Dict observation space", lambda tmp: Trainer("bc", env="RloxDpTestNestedDict-v0", demos=pendulum_demos()),
     ValueError, r"observation keys \['arm'\] are not Box spaces"),
    (12, "log_dir is a file", lambda tmp: (tmp / "f").write_text("x") and bc(tmp, "f"), RunDirectoryError,
     r"log_dir '.*/f' is a file"),
    (12, "video_dir is a file", lambda tmp: (tmp / "v").write_text("x") and bc(tmp).evaluate(1, video_dir=tmp / "v", n_videos=1),
     ValueError, r"video_dir '.*/v' is a file"),
    (12, "save to ''", lambda tmp: bc(tmp).save(""), ValueError, r"path must name a \.safetensors file, got ''"),
    (12, "save to a directory", lambda tmp: bc(tmp).save(tmp), ValueError, r"is a directory; give a file path"),
    (12, "select_action without batch dimension", lambda tmp: select_action(tmp, {"state": np.zeros(3, np.float32)}),
     ValueError, r"observation 'state' must have shape \(B, 3\), got \(3,\); it has no batch dimension"),
    (12, "select_action with a missing key", lambda tmp: select_action(tmp, {"pos": np.zeros((1, 3))}), KeyError,
     r"missing keys \['state'\]"),
    (12, "reset mask of the wrong length", reset_with_wrong_mask, ValueError,
     r"env_mask must have shape \(3,\).*got shape \(2,\)"),
]


@pytest.mark.parametrize("item,name,build,exc,pattern", RAISES, ids=[f"{c[0]}-{c[1]}" for c in RAISES])
def test_bad_input_raises_clear_error(item, name, build, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        build(tmp_path)


# -- 1. resuming never overwrites a newer checkpoint ---------------------------------------------
def test_01_resume_never_overwrites_a_newer_checkpoint(tmp_path):
    run = bc(tmp_path, checkpoint_every=2, keep_last_n=2)
    run.train(4, evaluate=False)
    folder = run.log_dir / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*")) == ["step_000002.safetensors", "step_000004.safetensors"]
    copy = Path(shutil.copy(folder / "last.safetensors", tmp_path / "copy.safetensors"))  # step 4

    # the run continues in its own directory (nothing newer there); old step files are pruned
    Trainer.load(folder / "last.safetensors", demos=pendulum_demos(), device="cpu", progress=False,
                 log_dir=run.log_dir).train(8, evaluate=False)
    assert sorted(p.name for p in folder.glob("step_*")) == ["step_000006.safetensors", "step_000008.safetensors"]
    assert (folder / "last.safetensors").read_bytes() == (folder / "step_000008.safetensors").read_bytes()

    # the stale copy resumes into a new directory beside the original by default ...
    old = Trainer.load(copy, demos=pendulum_demos(), device="cpu", progress=False)
    assert old.log_dir != run.log_dir and old.log_dir.parent == run.log_dir.parent
    old.train(6, evaluate=False)
    assert step_of(folder / "last.safetensors") == 8
    assert step_of(old.log_dir / "checkpoints" / "last.safetensors") == 6
    assert json.loads((old.log_dir / "run.json").read_text())["resumed_from"] == str(copy)
    # ... and is refused in the original directory, which holds step 8
    with pytest.raises(RunDirectoryError, match=r"newer checkpoint of this run \(step 8\).*\(step 4\)"):
        Trainer.load(copy, demos=pendulum_demos(), device="cpu", progress=False, log_dir=run.log_dir)


def test_01_run_directory_written_before_run_ids_resumes_in_place(tmp_path, monkeypatch):
    """A run of an older rlox_dp (no run.json, no run_id, only last.safetensors) continues in its
    own directory (identified by the log_dir its checkpoint records), and only there."""
    monkeypatch.chdir(tmp_path)  # relative log_dir, as the default runs/...
    run = bc(Path("."), "old-run")
    run.train(2, evaluate=False)
    last = run.log_dir / "checkpoints" / "last.safetensors"
    resave(last, last, run_id=...)
    for p in [run.log_dir / "run.json", *run.log_dir.glob("checkpoints/step_*")]:
        p.unlink()
    resumed = Trainer.load(last, demos=pendulum_demos(), device="cpu", progress=False, log_dir="old-run")
    resumed.train(4, evaluate=False)
    assert step_of(last) == 4
    with pytest.raises(RunDirectoryError, match="already holds another run"):
        bc(Path("."), "old-run")


def test_01_last_is_a_copy_where_hard_links_are_unsupported(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError("hard links not supported")

    monkeypatch.setattr(os, "link", no_links)
    run = bc(tmp_path, checkpoint_every=2)
    run.train(4, evaluate=False)
    folder = run.log_dir / "checkpoints"
    assert (folder / "last.safetensors").read_bytes() == (folder / "step_000004.safetensors").read_bytes()
    assert os.stat(folder / "last.safetensors").st_nlink == 1
    assert sorted(p.name for p in folder.iterdir()) == [
        "last.safetensors", "step_000002.safetensors", "step_000004.safetensors"]  # no temporaries


# -- 2. a used run directory is refused; one live process per directory ---------------------------
def test_02_reused_log_dir_is_refused_unless_overwrite(tmp_path, capsys):
    first = bc(tmp_path)
    first.train(2, evaluate=False)
    with pytest.raises(RunDirectoryError, match=r"already holds another run.*overwrite=True"):
        Trainer("bc_chunk", env="Pendulum-v1", config=TINY["bc_chunk"], demos=pendulum_demos(),
                log_dir=first.log_dir, device="cpu", progress=False)
    old_events = {p.name for p in first.log_dir.glob("events.out.tfevents.*")}
    second = Trainer("bc_chunk", env="Pendulum-v1", config=TINY["bc_chunk"], demos=pendulum_demos(),
                     log_dir=first.log_dir, device="cpu", progress=False, overwrite=True, preset=False)
    second.train(3, evaluate=False)
    assert not old_events & {p.name for p in first.log_dir.glob("events.out.tfevents.*")}  # not mixed
    assert sorted(p.name for p in (first.log_dir / "checkpoints").iterdir()) == [
        "last.safetensors", "step_000003.safetensors"]
    assert load_checkpoint(first.log_dir / "checkpoints" / "last.safetensors")[1]["algorithm"] == "bc_chunk"

    demos = save_demonstrations(pendulum_demos(), tmp_path / "demos.npz")
    code = main(["train", "bc", "--env", "Pendulum-v1", "--demos", str(demos), "--steps", "2", "--no-progress",
                 "--log-dir", str(first.log_dir), "--config", "hidden_dim=16"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("rlox-dp: error:") == 1 and "--overwrite" in err and "Traceback" not in err


def test_02_live_lock_refuses_a_second_process_and_a_dead_one_is_replaced(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / ".lock").write_text(json.dumps(
            {"pid": sleeper.pid, "host": HOSTNAME, "start": process_start_time(sleeper.pid), "token": "x"}))
        trainer = bc(tmp_path)
        with pytest.raises(RunDirectoryError, match=rf"in use by process {sleeper.pid} on .*delete"):
            trainer.train(1, evaluate=False)
    finally:
        sleeper.kill()  # as kill -9 of a training process: the lock stays behind
        sleeper.wait()
    with caplog.at_level(logging.WARNING, logger="rlox_dp"):
        trainer.train(1, evaluate=False)
    assert "stale lock" in caplog.text
    assert not (tmp_path / "run" / ".lock").exists()  # released when train() returns


# -- 5. checkpoint integrity ------------------------------------------------------------------
def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


EDITS = {
    "flipped bit in tensor data": lambda d: d[:-1] + bytes([d[-1] ^ 0x01]),
    "step edited in the header": lambda d: d.replace(b'\\"step\\": 2', b'\\"step\\": 9', 1),
    "n_obs_steps edited in the header": lambda d: d.replace(b'\\"n_obs_steps\\": 2', b'\\"n_obs_steps\\": 3', 1),
    "tensor dtype edited in the header": lambda d: d[:_header_end(d)].replace(b'"F32"', b'"I32"', 1) + d[_header_end(d):],
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_05_damaged_checkpoint_is_refused(edit, tmp_path):
    data = checkpoint(tmp_path).read_bytes()
    damaged = EDITS[edit](data)
    assert damaged != data and len(damaged) == len(data)
    (tmp_path / "bad.safetensors").write_bytes(damaged)
    with pytest.raises(CheckpointError, match="integrity check"):
        Trainer.load(tmp_path / "bad.safetensors", device="cpu", progress=False)


def test_05_old_checkpoint_without_digests_loads_with_a_warning(tmp_path, caplog):
    path = checkpoint(tmp_path)
    tensors, meta = load_checkpoint(path)
    old = tmp_path / "v1.safetensors"
    old.write_bytes(st_save(tensors, metadata={"rlox_dp": json.dumps({**meta, "version": 1})}))
    with caplog.at_level(logging.WARNING, logger="rlox_dp"):
        loaded = Trainer.load(old, device="cpu", progress=False)
    assert loaded.state.step == 2 and "without integrity digests" in caplog.text
    # a current-version file that lost its digests is not taken for an old one
    old.write_bytes(st_save(tensors, metadata={"rlox_dp": json.dumps(meta)}))
    with pytest.raises(CheckpointError, match="without its integrity digests"):
        Trainer.load(old, device="cpu", progress=False)


# -- 7. configure_inference is all or nothing -------------------------------------------------
def test_07_configure_inference_failure_changes_nothing(tmp_path):
    trainer = Trainer("diffusion", env="Pendulum-v1", config=TINY["diffusion"], demos=pendulum_demos(),
                      device="cpu", log_dir=tmp_path / "r", progress=False, preset=False)
    policy = trainer.eval_policy
    config, sampler = policy.config, policy.sampler
    with pytest.raises(ConfigError, match="ddim_eta"):
        policy.configure_inference("DDIM", 3, ddim_eta=2.0)
    assert policy.config is config and policy.sampler is sampler
    policy.configure_inference("DDIM", 3, ddim_eta=0.5)
    assert (policy.config.noise_scheduler_type, policy.config.num_inference_steps) == ("DDIM", 3)


# -- 8. --resume must match the positional algorithm and --env ---------------------------------
@pytest.mark.parametrize("args,named", [(["diffusion", "--env", "Pendulum-v1"], r"algorithm 'diffusion'.*'bc'"),
                                        (["bc", "--env", "MountainCarContinuous-v0"],
                                         r"--env 'MountainCarContinuous-v0'.*'Pendulum-v1'")])
def test_08_resume_with_another_algorithm_or_env_is_refused(args, named, tmp_path, capsys):
    ckpt = checkpoint(tmp_path)
    code = main(["train", *args, "--resume", str(ckpt), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert len([line for line in err.splitlines() if line.startswith("rlox-dp: error:")]) == 1
    assert re.search(named, err), err


# -- 9. demonstration actions slightly outside the action box: a warning with the fraction --------
def test_09_few_out_of_bounds_actions_warn_with_the_fraction(tmp_path, caplog):
    d = pendulum_demos()
    actions = d.actions.copy()
    actions[7, 0] = 2.5  # 1 of 160 values
    with caplog.at_level(logging.WARNING, logger="rlox_dp"):
        bc(tmp_path, demos=replace(d, actions=actions))
    assert "0.62% of the demonstration action values lie outside" in caplog.text


# -- 10. the CLI validates --eval-episodes like the config --------------------------------------
def test_10_negative_eval_episodes_is_an_error(tmp_path, capsys):
    demos = save_demonstrations(pendulum_demos(), tmp_path / "demos.npz")
    code = main(["train", "bc", "--env", "Pendulum-v1", "--demos", str(demos), "--steps", "1", "--no-progress",
                 "--eval-episodes", "-3", "--log-dir", str(tmp_path / "r")])
    assert code == 2 and "'n_eval_episodes' must be >= 0, got -3" in capsys.readouterr().err


# -- 11. an in-loop evaluation that fails saves the training state first -------------------------
def test_11_failing_in_loop_evaluation_saves_first(tmp_path, monkeypatch):
    trainer = bc(tmp_path, eval_every=3, checkpoint_every=100)

    def broken(*args, **kwargs):
        raise RuntimeError("the env crashed")

    monkeypatch.setattr(trainer, "evaluate", broken)
    with pytest.raises(RuntimeError, match="the env crashed"):
        trainer.train(6)
    assert step_of(trainer.log_dir / "checkpoints" / "last.safetensors") == 3


# -- 12. CLI: one error line (exit 2), --debug for the traceback, Ctrl-C keeps the results -------
def test_12_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"garbage")
    args = ["train", "bc", "--env", "Pendulum-v1", "--demos", str(garbage), "--no-progress",
            "--log-dir", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("rlox-dp: error:") and "Traceback" not in err
    assert main([*args, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
    (tmp_path / "v").write_text("x")
    assert main(["train", "bc", "--env", "Pendulum-v1", "--video-dir", str(tmp_path / "v"), "--no-progress"]) == 2
    assert "--video-dir" in capsys.readouterr().err and not (tmp_path / "runs").exists()


@pytest.mark.slow  # a fresh interpreter (about 10 s)
def test_12_allocation_failure_is_one_line(tmp_path):
    """horizon=10**9 under a 6 GB address-space limit (so nothing large is really allocated)."""
    resource = pytest.importorskip("resource")
    demos = save_demonstrations(pendulum_demos(), tmp_path / "demos.npz")
    limit = 6 * 2**30
    proc = subprocess.run(
        [sys.executable, "-m", "rlox_dp", "train", "diffusion", "--env", "Pendulum-v1", "--demos", str(demos),
         "--config", "horizon=1000000000", "--no-progress", "--log-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("rlox-dp: error: out of memory")
    assert "Traceback" not in proc.stderr


def _interrupt_after(monkeypatch, n_calls: int) -> None:
    """Ctrl-C at the ``n_calls``-th ``select_action`` call (Pendulum episodes are 200 steps)."""
    original, calls = Algorithm.select_action, {"n": 0}

    def select_action(self, obs):
        calls["n"] += 1
        if calls["n"] == n_calls:
            raise KeyboardInterrupt
        return original(self, obs)

    monkeypatch.setattr(Algorithm, "select_action", select_action)


def test_12_ctrl_c_during_eval_prints_what_was_evaluated(tmp_path, capsys, monkeypatch):
    ckpt = checkpoint(tmp_path)
    _interrupt_after(monkeypatch, 450)
    code = main(["eval", str(ckpt), "--episodes", "3", "--envs", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 130
    assert "interrupted: 2 of 3 episodes finished" in out and "eval/return_mean" in out


def test_12_ctrl_c_during_the_final_evaluation_keeps_the_results(tmp_path, monkeypatch):
    trainer = bc(tmp_path, n_eval_episodes=3, n_eval_envs=1)
    _interrupt_after(monkeypatch, 250)
    metrics = trainer.train(2)
    assert metrics["interrupted"] == 1.0 and metrics["eval/n_episodes"] == 1 and metrics["eval/n_requested"] == 3
    assert step_of(trainer.log_dir / "checkpoints" / "last.safetensors") == 2


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions (root ignores them)")
def test_12_read_only_log_dir(tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(RunDirectoryError, match="not writable"):
        bc(tmp_path, "ro/run")


# -- 13. file modes follow the umask; temporaries of killed saves are removed ----------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_13_checkpoint_mode_follows_the_umask(umask, mode, tmp_path):
    trainer = bc(tmp_path)
    before = os.umask(umask)
    try:
        path = trainer.save(tmp_path / "c.safetensors")
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == mode


def test_13_stale_temporaries_are_removed_at_the_next_save(tmp_path):
    trainer = bc(tmp_path)
    host = "".join(c if c.isalnum() or c == "_" else "_" for c in HOSTNAME)[:40]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        stale = tmp_path / f".c.safetensors.{host}-{int(dead.stdout)}-0123abcd.tmp"  # writer killed
        live = tmp_path / f".c.safetensors.{host}-{sleeper.pid}-4567abcd.tmp"  # writer still saving
        other = tmp_path / ".d.safetensors.x-1-89abcdef.tmp"  # another target's
        for p in (stale, live, other):
            p.write_bytes(b"\0" * 100)
        trainer.save(tmp_path / "c.safetensors")
        assert not stale.exists() and live.exists() and other.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_every_item_has_a_regression():
    named = {int(name.split("_")[1]) for name in globals() if name.startswith("test_") and name.split("_")[1].isdigit()}
    assert {c[0] for c in RAISES} | named >= {1, 2, 3, 5, 6, 7, 8, 9, 10, 11, 12, 13}
