"""Bad input -> a clear error naming the argument, what was expected and what was given.

One parametrized table; each row builds the bad input and states the error type and a regex the
message must match. Checkpoint and NaN-loss cases live in test_checkpoint.py / test_trainer.py.
"""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
from helpers import TINY, pendulum_demos

from rlox_dp import ConfigError, DemonstrationBuffer, Demonstrations, Trainer, Window
from rlox_dp.buffers import load_demonstrations, save_demonstrations


def trainer(algo="diffusion", env="Pendulum-v1", demos=None, **config):
    base = dict(TINY.get(algo, {}))
    base.update(config)
    return Trainer(algo, env=env, config=base, demos=demos if demos is not None else pendulum_demos(),
                   device="cpu", progress=False, preset=False)


def with_obs(demos: Demonstrations, obs: np.ndarray) -> Demonstrations:
    return replace(demos, observations={"state": obs})


def nan_obs():
    d = pendulum_demos()
    obs = d.observations["state"].copy()
    obs[17, 1] = np.nan
    return trainer(demos=with_obs(d, obs))


def inf_action():
    d = pendulum_demos()
    acts = d.actions.copy()
    acts[5, 0] = np.inf
    return trainer(demos=replace(d, actions=acts))


def empty_demos():
    d = Demonstrations(observations={"state": np.zeros((0, 3), np.float32)},
                       actions=np.zeros((0, 1), np.float32), episode_ends=np.zeros((0,), np.int64))
    return trainer(demos=d)


def zarr_without_episode_ends(tmp_path):
    path = save_demonstrations(pendulum_demos(), tmp_path / "d.zarr")
    shutil.rmtree(path / "meta" / "episode_ends")
    return load_demonstrations(path)


def zarr_inconsistent_lengths(tmp_path):
    d = pendulum_demos()
    bad = replace(d, episode_ends=np.asarray([40, 80, 120, 150], np.int64))
    path = tmp_path / "bad.zarr"
    import zarr

    good = save_demonstrations(d, path)
    root = zarr.open_group(str(good), mode="r+")
    root["meta/episode_ends"][:] = bad.episode_ends
    return load_demonstrations(good)


CASES = [
    ("unknown algorithm", lambda tmp: Trainer("difusion", env="Pendulum-v1"), ValueError,
     r"unknown algorithm 'difusion'.*Did you mean 'diffusion'.*bc"),
    ("unknown env id", lambda tmp: trainer(env="Pendulm-v1"), ValueError, r"Pendulm-v1.*Pendulum-v1"),
    ("discrete action space", lambda tmp: trainer(env="CartPole-v1"), ValueError,
     r"(?i)continuous.*Discrete"),
    ("obs dims differ from env", lambda tmp: trainer(demos=with_obs(pendulum_demos(), np.zeros((160, 4), np.float32))),
     ValueError, r"observation 'state'.*\(4,\).*\(3,\)"),
    ("action dims differ from env", lambda tmp: trainer(demos=replace(pendulum_demos(), actions=np.zeros((160, 2), np.float32))),
     ValueError, r"actions.*\(2,\).*\(1,\)"),
    ("horizon not divisible", lambda tmp: trainer(horizon=10, down_dims=[16, 32, 64]), ConfigError,
     r"'horizon' must be divisible by 2\*\*\(len\(down_dims\) - 1\) = 4.*got 10"),
    ("n_action_steps too large", lambda tmp: trainer(horizon=8, n_obs_steps=2, n_action_steps=8), ConfigError,
     r"'n_action_steps' must be in \[1, horizon - n_obs_steps \+ 1 = 7\].*got 8"),
    ("n_obs_steps < 1", lambda tmp: trainer(n_obs_steps=0), ConfigError, r"'n_obs_steps' must be >= 1, got 0"),
    ("num_inference_steps > T", lambda tmp: trainer(num_train_timesteps=10, num_inference_steps=20), ConfigError,
     r"'num_inference_steps' must be in \[1, num_train_timesteps = 10\], got 20"),
    ("unknown schedule", lambda tmp: trainer(noise_schedule="cosin"), ConfigError,
     r"'beta_schedule'.*'cosine'.*got 'cosin'.*Did you mean 'cosine'"),
    ("unknown sampler", lambda tmp: trainer(noise_scheduler_type="DDPX"), ConfigError,
     r"'noise_scheduler_type'.*'DDPM', 'DDIM'.*got 'DDPX'"),
    ("unknown prediction type", lambda tmp: trainer(prediction_type="noise"), ConfigError,
     r"'prediction_type'.*'epsilon', 'sample'.*got 'noise'"),
    ("unknown denoiser", lambda tmp: trainer(denoiser="lstm"), ConfigError,
     r"'denoiser'.*'unet', 'mlp', 'transformer'.*got 'lstm'"),
    ("unknown normalization mode", lambda tmp: trainer(action_normalization="zscore"), ConfigError,
     r"'action_normalization'.*'min_max', 'mean_std'.*got 'zscore'"),
    ("unknown config key", lambda tmp: trainer(learning_rat=1e-3), ConfigError,
     r"unknown config key 'learning_rat'.*Did you mean 'learning_rate'"),
    ("wrong value type", lambda tmp: trainer(lr="fast"), ConfigError, r"'lr': expected a number, got 'fast'"),
    ("weights download requested", lambda tmp: trainer(pretrained_backbone_weights="IMAGENET1K_V1"), ConfigError,
     r"'pretrained_backbone_weights' must be None"),
    ("obs mode on a non-PushT env", lambda tmp: trainer(obs="keypoints"), ValueError,
     r"config key 'obs'.*only.*PushT.*Pendulum-v1"),
    ("NaN in observations", lambda tmp: nan_obs(), ValueError, r"'state' contains NaN or inf at step 17"),
    ("inf in actions", lambda tmp: inf_action(), ValueError, r"'action' contains NaN or inf at step 5"),
    ("empty dataset", lambda tmp: empty_demos(), ValueError, r"(?i)empty|no episodes|at least one"),
    ("demos path missing", lambda tmp: trainer(demos=str(tmp / "missing.zarr")), FileNotFoundError,
     r"missing\.zarr"),
    ("zarr without meta/episode_ends", zarr_without_episode_ends, ValueError, r"episode_ends"),
    ("zarr with inconsistent lengths", zarr_inconsistent_lengths, ValueError, r"episode_ends"),
    ("seed given twice", lambda tmp: Trainer("bc", env="Pendulum-v1", seed=1, config={"seed": 2},
                                             demos=pendulum_demos()), ConfigError, r"seed given twice"),
    ("bad device", lambda tmp: trainer(algo="bc") if False else Trainer("bc", env="Pendulum-v1", device="tpu",
                                                                         demos=pendulum_demos()),
     ValueError, r"device must be 'auto', 'cpu', 'cuda'.*'tpu'"),
]


@pytest.mark.parametrize("name,build,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_clear_error(name, build, exc, pattern, tmp_path):
    with pytest.raises(exc, match=pattern):
        build(tmp_path)


def test_bad_input_table_is_large_enough():
    assert len(CASES) >= 20


def test_episodes_shorter_than_window_are_padded_not_rejected():
    d = pendulum_demos(n_episodes=3, length=3)  # shorter than horizon 8
    buf = DemonstrationBuffer(d, Window(n_obs_steps=2, horizon=8, n_action_steps=4))
    batch = buf.window(np.arange(len(buf)))
    assert len(buf) >= 3
    assert batch.action_is_pad.any(dim=1).all()
    assert (~batch.action_is_pad).sum(dim=1).min() >= 1
