"""The command line mirrors the API: train, eval, list; bad input exits 2 with a message."""

from __future__ import annotations

from helpers import pendulum_demos

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
    code = main(["eval", str(ckpt), "--sampler", "DDPM:10", "--no-progress"])
    assert code == 2 and "diffusion policies" in capsys.readouterr().err


def test_eval_with_another_sampler(tmp_path, capsys, monkeypatch):
    demos = save_demonstrations(pendulum_demos(), tmp_path / "demos.npz")
    assert main(["train", "diffusion", "--env", "Pendulum-v1", "--demos", str(demos), "--steps", "3",
                 "--config", "num_train_timesteps=10", "n_eval_episodes=2", "n_eval_envs=2",
                 "--log-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.safetensors"
    from rlox_dp import Trainer

    used = []
    evaluate = Trainer.evaluate

    def spy(self, *args, **kwargs):
        used.append((self.eval_policy.config.noise_scheduler_type,
                     self.eval_policy.config.num_inference_steps))
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", spy)
    capsys.readouterr()
    assert main(["eval", str(ckpt), "--episodes", "2", "--envs", "2", "--sampler", "ddim:3",
                 "--no-progress"]) == 0
    assert used == [("DDIM", 3)]
    assert main(["eval", str(ckpt), "--sampler", "DDIM:x", "--no-progress"]) == 2
    assert "KIND[:STEPS]" in capsys.readouterr().err
    assert main(["eval", str(ckpt), "--sampler", "DDIM:30", "--no-progress"]) == 2
    assert "num_inference_steps" in capsys.readouterr().err


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
    assert "denoisers: unet" in out and "dpmsolver++" in out and "gym_pusht/PushT-v0" in out
