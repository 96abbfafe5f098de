"""The command line mirrors the API: train, eval, list; bad input exits 2 with a message."""

from __future__ import annotations

from conftest import pendulum_demos

from rlox_dp.buffers import save_demonstrations
from rlox_dp.cli import main, parse_overrides


def test_parse_overrides_types():
    got = parse_overrides(["lr=3e-4", "down_dims=64,128", "clip_sample=false", "crop_shape=null",
                           "noise_scheduler_type=DDIM", "horizon=16"])
    assert got == {"lr": 3e-4, "down_dims": [64, 128], "clip_sample": False, "crop_shape": None,
                   "noise_scheduler_type": "DDIM", "horizon": 16}


def test_train_then_eval_prints_tables(tmp_path, capsys):
    demos = save_demonstrations(pendulum_demos(), tmp_path / "demos.npz")
    code = main(["train", "bc", "--env", "Pendulum-v1", "--demos", str(demos), "--steps", "5",
                 "--config", "hidden_dim=16", "n_eval_episodes=2", "n_eval_envs=2",
                 "--log-dir", str(tmp_path / "run"), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "eval/return_mean" in out and "checkpoint" in out
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    assert ckpt.is_file()
    code = main(["eval", str(ckpt), "--episodes", "3", "--envs", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "eval/n_episodes" in out and " 3" in out


def test_bad_input_exits_2_with_message(tmp_path, capsys):
    code = main(["train", "difusion", "--env", "Pendulum-v1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown algorithm 'difusion'" in err
    code = main(["train", "bc", "--env", "Pendulum-v1", "--config", "nope"])
    assert code == 2 and "key=value" in capsys.readouterr().err


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "diffusion" in out and "Pendulum-v1" in out
