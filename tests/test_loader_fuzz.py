"""Fuzz test of the demonstration loaders: never train on something other than what was written.

Hypothesis writes random ``.npz`` archives and zarr (format 2) stores, without this library's
writer: random episode ends, observation keys, per-step shapes and dtypes, optional rewards and
seeds, and at most one defect (a missing or extra array, a wrong length, bad episode ends, a NaN,
a non-real dtype, a missing or truncated zarr chunk). Loading must either return exactly the
arrays written (values and dtypes) or raise ``ValueError``/``KeyError`` whose message names the
array at fault.
"""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlox_dp.buffers import load_demonstrations

OBS_KEYS = ["obs_alpha", "obs_beta", "obs_gamma"]
GOOD_DTYPES = ["float16", "float32", "float64", "int8", "int32", "int64", "uint8"]
DEFECTS = ["none", "none", "drop", "extra_long", "extra_ok", "short", "ends", "nan", "dtype",
           "reward_length", "missing_chunk", "truncated_chunk"]


@st.composite
def stores(draw):
    """``(arrays, defect, culprit)``: the arrays to write (name -> array) and which one is bad."""
    lengths = draw(st.lists(st.integers(1, 5), min_size=1, max_size=4))
    n = sum(lengths)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keys = draw(st.lists(st.sampled_from(OBS_KEYS), min_size=1, max_size=3, unique=True))
    arrays: dict[str, np.ndarray] = {}
    for key in keys:
        shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
        dtype = np.dtype(draw(st.sampled_from(GOOD_DTYPES)))
        values = rng.normal(0, 50, size=(n, *shape))
        arrays[f"obs/{key}"] = (values if dtype.kind == "f" else np.clip(values, 0, 100)).astype(dtype)
    arrays["action"] = rng.normal(size=(n, draw(st.integers(1, 3)))).astype(draw(st.sampled_from(["float32", "float64"])))
    arrays["episode_ends"] = np.cumsum(lengths).astype(draw(st.sampled_from(["int32", "int64"])))
    if draw(st.booleans()):
        arrays["reward"] = rng.normal(size=n)
    if draw(st.booleans()):
        arrays["episode_seeds"] = np.arange(len(lengths), dtype=np.int64)

    defect = draw(st.sampled_from(DEFECTS))
    obs_names = [k for k in arrays if k.startswith("obs/")]
    culprit = None
    if defect == "drop":
        culprit = draw(st.sampled_from([*obs_names, "action", "episode_ends"]))
        del arrays[culprit]
    elif defect in ("extra_long", "extra_ok"):
        culprit = "obs/obs_extra"
        arrays[culprit] = rng.normal(size=(n + (defect == "extra_long"), 2))
        if defect == "extra_ok":
            culprit = None  # a well-formed extra observation is simply loaded
    elif defect == "short":
        culprit = draw(st.sampled_from([*obs_names, "action"]))
        arrays[culprit] = arrays[culprit][: n - 1] if n > 1 else arrays[culprit][:0]
    elif defect == "ends":
        culprit = "episode_ends"
        ends = arrays[culprit]
        arrays[culprit] = draw(st.sampled_from([ends + 1, ends[::-1].copy() if len(ends) > 1 else ends - 1,
                                                ends.astype(np.float64)]))
    elif defect == "nan":
        floats = [k for k in [*obs_names, "action"] if arrays[k].dtype.kind == "f"]
        culprit = draw(st.sampled_from(floats))
        bad = arrays[culprit].copy()
        bad.reshape(n, -1)[draw(st.integers(0, n - 1)), 0] = draw(st.sampled_from([np.nan, np.inf]))
        arrays[culprit] = bad
    elif defect == "dtype":
        culprit = draw(st.sampled_from([*obs_names, "action"]))
        arrays[culprit] = arrays[culprit].astype(draw(st.sampled_from(["complex64", "bool"])))
    elif defect == "reward_length":
        culprit = "reward"
        arrays[culprit] = np.zeros(n + 1)
    elif defect in ("missing_chunk", "truncated_chunk"):
        culprit = draw(st.sampled_from([*obs_names, "action", "episode_ends"]))
    return arrays, defect, culprit


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    np.savez(path, **arrays)
    return path


def zarr_name(name: str) -> str:
    """The zarr path of an npz-style array name."""
    if name.startswith("obs/"):
        return "data/" + name[4:]
    return "data/action" if name == "action" else f"meta/{name}"


def write_zarr(arrays: dict[str, np.ndarray], path: Path, defect: str, culprit: str | None, draw) -> Path:
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    root.require_group("data")
    root.require_group("meta")
    for name, arr in arrays.items():
        group, key = zarr_name(name).split("/")
        chunks = (max(1, len(arr) // 2), *arr.shape[1:]) if len(arr) else None
        out = root[group].create_array(key, shape=arr.shape, dtype=arr.dtype, chunks=chunks,
                                       config={"write_empty_chunks": True})
        out[...] = arr
    if defect in ("missing_chunk", "truncated_chunk"):
        files = sorted(p for p in (path / zarr_name(culprit)).iterdir() if not p.name.startswith("."))
        victim = files[draw(st.integers(0, len(files) - 1))]
        if defect == "missing_chunk":
            victim.unlink()
        else:
            victim.write_bytes(victim.read_bytes()[: draw(st.integers(0, 8))])
    return path


def loaded_arrays(demos) -> dict[str, np.ndarray]:
    out = {f"obs/{k}": v for k, v in demos.observations.items()}
    out.update(action=demos.actions, episode_ends=demos.episode_ends)
    if demos.rewards is not None:
        out["reward"] = demos.rewards
    if demos.episode_seeds is not None:
        out["episode_seeds"] = demos.episode_seeds
    return out


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(FUZZ, max_examples=60)
@given(store=stores(), data=st.data())
def test_npz_loader_returns_what_was_written_or_names_the_bad_array(store, data):
    check_round_trip("npz", store, data)


@settings(FUZZ, max_examples=25)  # zarr writes are slower (about 0.2 s per store)
@given(store=stores(), data=st.data())
def test_zarr_loader_returns_what_was_written_or_names_the_bad_array(store, data):
    check_round_trip("zarr", store, data)


def check_round_trip(fmt: str, store, data) -> None:
    """Write ``store`` as ``fmt``, load it, and check the contract of the module docstring."""
    arrays, defect, culprit = store
    if fmt == "npz" and defect in ("missing_chunk", "truncated_chunk"):
        defect, culprit = "none", None  # zarr-only defects
    with TemporaryDirectory() as tmp:
        if fmt == "npz":
            path = write_npz(arrays, Path(tmp) / "demos.npz")
        else:
            path = write_zarr(arrays, Path(tmp) / "demos.zarr", defect, culprit, data.draw)
        requested = sorted(k[4:] for k in arrays if k.startswith("obs/"))
        if defect == "drop" and culprit.startswith("obs/"):
            requested.append(culprit[4:])  # ask for the array that is not there
        try:
            demos = load_demonstrations(path, obs_keys=requested or None)
        except (ValueError, KeyError) as err:
            assert culprit is not None, f"a well-formed store was refused: {err}"
            named = culprit.split("/")[-1]
            assert named in str(err), f"{defect} of {culprit!r}: the error does not name it: {err}"
            return
    assert culprit is None, f"{defect} of {culprit!r} loaded without an error"
    got = loaded_arrays(demos)
    assert set(got) == set(arrays)
    for name, written in arrays.items():
        assert got[name].dtype == written.dtype, name
        np.testing.assert_array_equal(got[name], written, err_msg=name)
