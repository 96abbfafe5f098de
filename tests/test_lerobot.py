"""LeRobotDataset v3.0 reader on a real fixture: ``tests/data/lerobot/pusht_3ep_v3`` is the first 3
episodes of the human PushT zarr written by LeRobot 0.6.1's own writer (AV1 video; see the README
beside it). Needs pyarrow and av (``pip install -e ".[lerobot]"``); the comparison with the zarr
needs ``RLOX_DP_PUSHT_ZARR``."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

from rlox_dp import Trainer  # noqa: E402
from rlox_dp.buffers.lerobot import (  # noqa: E402
    default_feature_map,
    is_lerobot_dataset,
    lerobot_features,
    load_lerobot_dataset,
)

FIXTURE = Path(__file__).parent / "data" / "lerobot" / "pusht_3ep_v3"
ZARR = os.environ.get("RLOX_DP_PUSHT_ZARR")
ENDS = [161, 279, 420]
#: AV1 at crf 30 is lossy: the decoded frames differ from the zarr's by this much at most, as mean
#: |error| on the 0..255 scale (measured: 0.88 over all 420 frames, 1.78 for the worst frame).
MEAN_ERROR_ALL, MEAN_ERROR_FRAME = 1.5, 2.5


@pytest.fixture(scope="module")
def demos():
    return load_lerobot_dataset(FIXTURE)


def test_loads_episodes_features_and_fps(demos):
    assert is_lerobot_dataset(FIXTURE) and not is_lerobot_dataset(FIXTURE / "meta")
    assert demos.episode_ends.tolist() == ENDS
    assert demos.observations["image"].shape == (420, 3, 96, 96)
    assert demos.observations["image"].dtype == np.uint8
    assert demos.observations["state"].shape == (420, 2)
    assert demos.actions.shape == (420, 2) and demos.actions.dtype == np.float32
    assert demos.metadata["fps"] == 10.0
    assert demos.metadata["features"] == {"observation.image": "image", "observation.state": "state"}


@pytest.mark.skipif(not ZARR or not Path(ZARR).exists(), reason="set RLOX_DP_PUSHT_ZARR to the PushT replay zarr")
def test_episodes_equal_the_zarr_episodes_they_came_from(demos):
    import zarr

    root = zarr.open_group(ZARR, mode="r")
    assert np.asarray(root["meta/episode_ends"][:3]).tolist() == ENDS
    n = ENDS[-1]
    state = np.asarray(root["data/state"][:n])
    np.testing.assert_array_equal(demos.observations["state"], state[:, :2].astype(np.float32))
    np.testing.assert_array_equal(demos.actions, np.asarray(root["data/action"][:n]).astype(np.float32))
    images = np.asarray(root["data/img"][:n]).transpose(0, 3, 1, 2).astype(np.float64)
    error = np.abs(demos.observations["image"].astype(np.float64) - images)
    per_frame = error.mean(axis=(1, 2, 3))
    assert error.mean() <= MEAN_ERROR_ALL and per_frame.max() <= MEAN_ERROR_FRAME
    # frames are where they belong: one frame off, the error grows (0.88 -> 1.15 and 1.22)
    got = demos.observations["image"].astype(np.float64)
    for shift in (-1, 1):
        shifted = np.abs(got[5:-5] - images[5 + shift : n - 5 + shift]).mean()
        assert shifted > 1.2 * error[5:-5].mean()


def test_feature_map_default_override_and_env_keys(demos):
    features = lerobot_features(FIXTURE)
    assert default_feature_map(features) == {"observation.image": "image", "observation.state": "state"}
    # gym-pusht's image mode calls the agent position "agent_pos" (LeRobot's observation.state)
    assert default_feature_map(features, ["image", "agent_pos"]) == {
        "observation.image": "image", "observation.state": "agent_pos"}
    custom = load_lerobot_dataset(FIXTURE, {"observation.state": "agent_xy"})
    assert list(custom.observations) == ["agent_xy"]
    np.testing.assert_array_equal(custom.observations["agent_xy"], demos.observations["state"])
    assert default_feature_map({"observation.images.top": {}, "observation.environment_state": {},
                                "action": {}}) == {"observation.images.top": "top",
                                                   "observation.environment_state": "environment_state"}


def test_episode_subset_in_the_order_given(demos):
    part = load_lerobot_dataset(FIXTURE, episodes=[2, 0])
    assert part.episode_ends.tolist() == [141, 302]
    assert part.metadata["episode_index"] == [2, 0]
    for key in ("image", "state"):
        expected = np.concatenate([demos.observations[key][279:420], demos.observations[key][0:161]])
        np.testing.assert_array_equal(part.observations[key], expected)


def test_images_stored_in_parquet_load_exactly(demos, tmp_path):
    """LeRobot's ``use_videos=False`` layout: PNG bytes in the parquet rows (dtype ``image``),
    made here from the fixture's decoded frames; PNG is lossless, so they come back exactly."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    root = tmp_path / "images"
    shutil.copytree(FIXTURE, root)
    data = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data)
    cells = []
    for frame in demos.observations["image"]:
        buffer = io.BytesIO()
        Image.fromarray(frame.transpose(1, 2, 0)).save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(table.append_column("observation.image", pa.array(cells, type=image_type)), data)
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.image"]["dtype"] = "image"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    shutil.rmtree(root / "videos")
    loaded = load_lerobot_dataset(root)
    np.testing.assert_array_equal(loaded.observations["image"], demos.observations["image"])
    np.testing.assert_array_equal(loaded.observations["state"], demos.observations["state"])


def test_bad_input_is_refused_with_a_clear_message(tmp_path):
    with pytest.raises(KeyError, match="has no features \\['observation.images.top'\\]"):
        load_lerobot_dataset(FIXTURE, {"observation.images.top": "top"})
    with pytest.raises(ValueError, match="episodes \\[7\\]"):
        load_lerobot_dataset(FIXTURE, episodes=[7])
    with pytest.raises(ValueError, match="observation keys \\['pixels'\\] have no feature"):
        load_lerobot_dataset(FIXTURE, obs_keys=["pixels", "state"])
    old = tmp_path / "old"
    shutil.copytree(FIXTURE, old)
    info = json.loads((old / "meta" / "info.json").read_text())
    (old / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match="format v2.1"):
        load_lerobot_dataset(old)
    with pytest.raises(FileNotFoundError):
        load_lerobot_dataset(tmp_path / "missing")


def test_trainer_trains_on_a_lerobot_folder(tmp_path):
    """``Trainer(..., demos=<LeRobot folder>)``: PushT switches to image mode (image + agent_pos)."""
    config = {"down_dims": [16, 32], "n_groups": 4, "diffusion_step_embed_dim": 16,
              "num_train_timesteps": 10, "horizon": 8, "batch_size": 4, "lr_warmup_steps": 1,
              "log_every": 1}
    trainer = Trainer("diffusion", env="gym_pusht/PushT-v0", demos=str(FIXTURE), config=config,
                      device="cpu", log_dir=tmp_path / "run", progress=False, preset=False)
    assert trainer.env_kwargs["obs_mode"] == "image"
    assert set(trainer.observation_space.spaces) == {"image", "agent_pos"}
    assert len(trainer.buffer) > 0
    metrics = trainer.train(2, evaluate=False)
    assert math.isfinite(metrics["loss"])
