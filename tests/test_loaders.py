"""Tests for the demonstration loaders (rlox_dp.buffers): zarr/npz round trips, errors, rollouts, real PushT."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from rlox_dp.buffers import (
    Demonstrations,
    demonstrations_from_episodes,
    load_demonstrations,
    save_demonstrations,
)
from rlox_dp.buffers.npz_archive import write_npz
from rlox_dp.buffers.zarr_store import write_zarr


def make_demos(with_extras: bool = True) -> Demonstrations:
    rng = np.random.default_rng(0)
    ends = np.array([4, 9, 10], dtype=np.int64)
    n = int(ends[-1])
    return Demonstrations(
        observations={
            "state": rng.normal(size=(n, 5)).astype(np.float32),
            "keypoint": rng.normal(size=(n, 9, 2)),
            "image": rng.integers(0, 256, size=(n, 3, 6, 6)).astype(np.uint8),
        },
        actions=rng.uniform(0, 512, size=(n, 2)).astype(np.float32),
        episode_ends=ends,
        rewards=rng.uniform(size=n) if with_extras else None,
        episode_seeds=np.array([3, 1, 4], dtype=np.int64) if with_extras else None,
        metadata={"source": "test", "expert_return": 0.9} if with_extras else {},
    )


def assert_same(a: Demonstrations, b: Demonstrations) -> None:
    assert list(a.observations) == list(b.observations)
    for key in a.observations:
        assert a.observations[key].dtype == b.observations[key].dtype
        np.testing.assert_array_equal(a.observations[key], b.observations[key])
    for name in ("actions", "episode_ends", "rewards", "episode_seeds"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y)
    assert a.metadata == b.metadata


@pytest.mark.parametrize("suffix", [".zarr", ".npz"])
@pytest.mark.parametrize("with_extras", [True, False])
def test_round_trip_exact(tmp_path: Path, suffix: str, with_extras: bool) -> None:
    demos = make_demos(with_extras)
    path = save_demonstrations(demos, tmp_path / f"demos{suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"demos{suffix}"]  # no temp leftovers
    assert_same(demos, load_demonstrations(path))
    part = load_demonstrations(path, obs_keys=["state"])
    assert list(part.observations) == ["state"]


def test_zarr_is_format_v2(tmp_path: Path) -> None:
    path = save_demonstrations(make_demos(), tmp_path / "d.zarr")
    meta = json.loads((path / "data" / "state" / ".zarray").read_text())
    assert meta["zarr_format"] == 2 and meta["shape"] == [10, 5]
    assert (path / "meta" / "episode_ends" / ".zarray").exists()


def test_reads_store_written_without_this_library(tmp_path: Path) -> None:
    import zarr

    root = zarr.open_group(str(tmp_path / "orig.zarr"), mode="w", zarr_format=2)
    values = {"state": np.arange(12.0).reshape(6, 2), "action": np.ones((6, 2)), "agent_pos": np.zeros((6, 1))}
    every_chunk = {"write_empty_chunks": True}
    for key, arr in values.items():
        root.require_group("data").create_array(key, shape=arr.shape, dtype=arr.dtype, config=every_chunk)[...] = arr
    root.require_group("meta").create_array("episode_ends", shape=(2,), dtype="i8")[...] = [2, 6]
    demos = load_demonstrations(tmp_path / "orig.zarr")
    assert list(demos.observations) == ["agent_pos", "state"]  # sorted: listings have no order
    np.testing.assert_array_equal(demos.observations["state"], values["state"])
    assert demos.episode_ends.tolist() == [2, 6] and demos.rewards is None and demos.metadata == {}
    # zarr 3's default (write_empty_chunks=False) leaves the all-zero agent_pos without chunks:
    # refused (a lost chunk looks the same), unless the caller says absent chunks are fill values
    root["data"].create_array("agent_pos", shape=(6, 1), dtype="f8", overwrite=True)[...] = 0.0
    with pytest.raises(ValueError, match=r"'data/agent_pos' is incomplete.*allow_missing_chunks"):
        load_demonstrations(tmp_path / "orig.zarr")
    lenient = load_demonstrations(tmp_path / "orig.zarr", allow_missing_chunks=True)
    np.testing.assert_array_equal(lenient.observations["agent_pos"], values["agent_pos"])


def test_overwrite(tmp_path: Path) -> None:
    for suffix in (".zarr", ".npz"):
        path = save_demonstrations(make_demos(), tmp_path / f"d{suffix}")
        with pytest.raises(FileExistsError, match="overwrite"):
            save_demonstrations(make_demos(), path)
        smaller = make_demos(with_extras=False)
        save_demonstrations(smaller, path, overwrite=True)
        assert_same(smaller, load_demonstrations(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz", "d.zarr"]


def test_channels_last_images(tmp_path: Path) -> None:
    demos = make_demos()
    hwc = demos.observations["image"].transpose(0, 2, 3, 1).astype(np.float32)  # like PushT's img
    demos.observations["image"] = hwc
    # Stores as other tools write them (save_demonstrations refuses channel-last images).
    writers = {".zarr": write_zarr, ".npz": write_npz}
    for suffix, write in writers.items():
        path = tmp_path / f"d{suffix}"
        write(demos, path)
        loaded = load_demonstrations(path, obs_keys=["image", "state"], channels_last_keys=["image"])
        assert loaded.observations["image"].dtype == np.uint8
        np.testing.assert_array_equal(loaded.observations["image"], hwc.transpose(0, 3, 1, 2))
    with pytest.raises(ValueError, match="channel-last"):
        save_demonstrations(demos, tmp_path / "refused.npz")
    demos.observations["image"] = hwc + 0.5
    path = tmp_path / "bad.npz"
    write_npz(demos, path)
    with pytest.raises(ValueError, match="0..255"):
        load_demonstrations(path, channels_last_keys=["image"])
    with pytest.raises(ValueError, match="channels_last_keys"):
        load_demonstrations(path, obs_keys=["state"], channels_last_keys=["image"])


def test_missing_path_and_bad_suffix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.zarr"
    with pytest.raises(FileNotFoundError, match="nope.zarr"):
        load_demonstrations(missing)
    other = tmp_path / "d.pkl"
    other.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.zarr.*\.npz"):
        load_demonstrations(other)
    with pytest.raises(ValueError, match=r"\.zarr or \.npz"):
        save_demonstrations(make_demos(), tmp_path / "d.h5")


def test_zarr_errors(tmp_path: Path) -> None:
    path = save_demonstrations(make_demos(), tmp_path / "d.zarr")
    with pytest.raises(KeyError, match="'velocity'"):
        load_demonstrations(path, obs_keys=["velocity"])
    with pytest.raises(ValueError, match="'act'"):
        load_demonstrations(path, action_key="act")
    # inconsistent lengths: replace data/state with a shorter array
    short = make_demos()
    short.observations = {"state": short.observations["state"][:7]}
    short.actions, short.episode_ends = short.actions[:7], np.array([7])
    short.rewards, short.episode_seeds = None, None
    other = save_demonstrations(short, tmp_path / "short.zarr")
    shutil.rmtree(path / "data" / "state")
    shutil.copytree(other / "data" / "state", path / "data" / "state")
    with pytest.raises(ValueError, match="'state'.* has 7 steps"):
        load_demonstrations(path)
    shutil.rmtree(path / "meta" / "episode_ends")
    with pytest.raises(ValueError, match="meta/episode_ends"):
        load_demonstrations(path)


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    x = np.zeros((4, 2), np.float32)
    np.savez(path, **{"obs/state": x, "action": x})
    with pytest.raises(ValueError, match="episode_ends"):
        load_demonstrations(path)
    bad = x.copy()
    bad[2, 0] = np.nan
    np.savez(path, **{"obs/state": bad, "action": x, "episode_ends": np.array([1, 4])})
    with pytest.raises(ValueError, match=r"'state'.*step 2 \(episode 1, step 1"):
        load_demonstrations(path)
    np.savez(path, **{"obs/state": x, "action": x, "episode_ends": np.array([3])})
    with pytest.raises(ValueError, match="episode_ends"):
        load_demonstrations(path)
    np.savez(path, **{"obs/state": np.array([object()] * 4), "action": x, "episode_ends": np.array([4])})
    with pytest.raises(ValueError, match="allow_pickle"):  # never unpickled
        load_demonstrations(path)


def test_save_rejects_invalid(tmp_path: Path) -> None:
    demos = make_demos()
    demos.actions[3, 1] = np.inf
    with pytest.raises(ValueError, match="'action'"):
        save_demonstrations(demos, tmp_path / "d.npz")
    demos = make_demos()
    demos.metadata = {"bad": object()}
    with pytest.raises(TypeError, match="JSON"):
        save_demonstrations(demos, tmp_path / "d.npz")
    assert not any(tmp_path.iterdir())


def test_from_episodes() -> None:
    rng = np.random.default_rng(1)
    episodes = [
        {"obs": {"agent_pos": rng.normal(size=(n, 2)), "image": np.zeros((n, 3, 2, 2), np.uint8)},
         "action": rng.normal(size=(n, 2)), "reward": rng.uniform(size=n), "seed": 10 + i}
        for i, n in enumerate([3, 1, 5])
    ]
    demos = demonstrations_from_episodes(episodes)
    assert demos.episode_ends.tolist() == [3, 4, 9] and demos.episode_seeds.tolist() == [10, 11, 12]
    np.testing.assert_array_equal(demos.observations["agent_pos"][3], episodes[1]["obs"]["agent_pos"][0])
    np.testing.assert_array_equal(demos.rewards[4:], episodes[2]["reward"])
    arrays = demonstrations_from_episodes([{"obs": np.ones((2, 4)), "action": np.ones((2, 1))}])
    assert list(arrays.observations) == ["state"] and arrays.rewards is None

    with pytest.raises(ValueError, match=r"episodes\[1\] is empty"):
        empty = {"obs": np.ones((0, 4)), "action": np.ones((0, 2))}
        demonstrations_from_episodes([{"obs": np.ones((2, 4)), "action": np.ones((2, 2))}, empty])
    with pytest.raises(ValueError, match=r"episodes\[0\] obs 'state'.*final observation"):
        demonstrations_from_episodes([{"obs": np.ones((3, 4)), "action": np.ones((2, 2))}])
    with pytest.raises(ValueError, match=r"episodes\[1\] has keys"):
        demonstrations_from_episodes([episodes[0], {**episodes[1], "seed": None} | {"obs": {"x": np.ones((1, 2))}}])
    with pytest.raises(ValueError, match="non-empty"):
        demonstrations_from_episodes([])


PUSHT = os.environ.get("RLOX_DP_PUSHT_ZARR")


@pytest.mark.skipif(not PUSHT or not Path(PUSHT).exists(), reason="set RLOX_DP_PUSHT_ZARR to the PushT zarr")
def test_real_pusht_zarr() -> None:
    demos = load_demonstrations(PUSHT, obs_keys=["state"])
    assert demos.n_episodes == 206 and demos.n_steps == 25650
    assert list(demos.observations) == ["state"]  # data/img not read
    assert demos.observations["state"].shape == (25650, 5) and demos.actions.shape == (25650, 2)
    assert demos.episode_lengths.min() >= 1
