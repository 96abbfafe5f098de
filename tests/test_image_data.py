"""The image data path: uint8 frames held once, windows index into them, crops after indexing."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from rlox_dp import Trainer
from rlox_dp.buffers import DemonstrationBuffer, Demonstrations
from rlox_dp.presets import OBS_MODE_PRESETS, preset_for
from rlox_dp.window import Window

ZARR = os.environ.get("RLOX_DP_PUSHT_ZARR")
PUSHT = "gym_pusht/PushT-v0"


def image_demos(n_episodes: int = 3, length: int = 20, size: int = 24) -> Demonstrations:
    rng = np.random.default_rng(0)
    n = n_episodes * length
    return Demonstrations(
        observations={"image": rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8),
                      "agent_pos": rng.uniform(0, 512, (n, 2)).astype(np.float32)},
        actions=rng.uniform(0, 512, (n, 2)).astype(np.float32),
        episode_ends=np.arange(length, n + 1, length))


def test_frames_are_held_once_as_uint8_and_windows_index_into_them():
    demos = image_demos()
    frames = demos.observations["image"]
    buffer = DemonstrationBuffer(demos, Window(n_obs_steps=2, horizon=8, n_action_steps=4))
    stored = buffer.stored("image")
    assert stored.dtype == torch.uint8
    assert buffer.storage_nbytes["image"] == frames.nbytes == frames.shape[0] * 3 * 24 * 24
    assert stored.data_ptr() == torch.from_numpy(frames).data_ptr()  # the demos' array, no copy
    # everything held: frames x bytes plus the small low-dim keys, no float copy of the images
    low_dim = sum(v for k, v in buffer.storage_nbytes.items() if k != "image")
    assert low_dim == frames.shape[0] * 2 * 4 * 2  # agent_pos and action as float32
    assert sum(buffer.storage_nbytes.values()) < 1.1 * frames.nbytes
    # a window's images are the indexed frames scaled to [0, 1] (edge-padded at the start)
    batch = buffer.window(torch.tensor([0, 5]))
    images = batch.obs["image"]
    assert images.shape == (2, 2, 3, 24, 24) and images.dtype == torch.float32
    torch.testing.assert_close(images[0, 0], torch.from_numpy(frames[0]).float() / 255)  # padded
    torch.testing.assert_close(images[1, 1], torch.from_numpy(frames[5]).float() / 255)
    with pytest.raises(KeyError, match="'depth'"):
        buffer.stored("depth")


def test_channel_last_frames_in_data_are_refused():
    demos = image_demos()
    hwc = Demonstrations(observations={**demos.observations,
                                       "image": np.moveaxis(demos.observations["image"], 1, -1).copy()},
                         actions=demos.actions, episode_ends=demos.episode_ends)
    with pytest.raises(ValueError, match=r"observations\['image'\].*channel-last.*moveaxis"):
        DemonstrationBuffer(hwc, Window(n_obs_steps=2, horizon=8, n_action_steps=4))


def test_image_preset_is_selected_by_the_observation_mode():
    image = preset_for("diffusion", PUSHT, "image")
    assert image["vision_backbone"] == "compact" and image["vision_precision"] == "auto"
    assert preset_for("diffusion", PUSHT, "keypoints") == preset_for("diffusion", PUSHT)
    assert "vision_backbone" not in preset_for("diffusion", PUSHT)
    image["lr"] = 1.0  # copies
    assert OBS_MODE_PRESETS[("diffusion", PUSHT, "image")]["lr"] == 3e-4
    assert preset_for("bc", PUSHT, "image")["vision_backbone"] == "compact"
    assert "horizon" not in preset_for("bc", PUSHT, "image")  # BC-MLP predicts one action


@pytest.mark.skipif(not ZARR, reason="RLOX_DP_PUSHT_ZARR not set")
def test_trainer_with_obs_image_does_the_measured_thing(tmp_path):
    """``Trainer(..., config={"obs": "image"})`` on the human PushT demos: the image preset, the
    frames held once (25,650 x 96 x 96 x 3 bytes), a training step of the compact encoder."""
    torch.set_num_threads(1)
    algorithm = "diffusion"
    trainer = Trainer(algorithm, env=PUSHT, demos=ZARR, device="cpu", progress=False,
                      log_dir=tmp_path / "run", config={"obs": "image", "batch_size": 4})
    for key, value in preset_for(algorithm, PUSHT, "image").items():
        if key != "batch_size":
            owner = trainer.config if hasattr(trainer.config, key) else trainer.training
            assert getattr(owner, key) == (tuple(value) if isinstance(value, tuple) else value)
    buffer = trainer.buffer
    assert buffer.stored("image").dtype == torch.uint8
    assert buffer.storage_nbytes["image"] == 25_650 * 96 * 96 * 3
    encoder = trainer.policy.obs_encoder.image_encoder.encoders[0]
    assert type(encoder).__name__ == "CompactConvEncoder" and encoder.crop_shape == (84, 84)
    start = time.perf_counter()
    metrics = trainer.train(2, evaluate=False)
    assert np.isfinite(metrics["loss"]) and time.perf_counter() - start < 60
