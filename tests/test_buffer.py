"""Tests for rlox_dp.buffers.DemonstrationBuffer: windowing, padding, sampling, validation."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlox_dp.buffers import DemonstrationBuffer, Demonstrations, Normalizer
from rlox_dp.window import Window

RAW = {"state": "identity", "action": "identity"}


def encoded_demos(lengths: list[int]) -> Demonstrations:
    """Every step's obs and action are ``[episode, step_in_episode]`` (action offset by 0.5)."""
    ep = np.concatenate([np.full(n, e) for e, n in enumerate(lengths)])
    step = np.concatenate([np.arange(n) for n in lengths])
    code = np.stack([ep, step], axis=1).astype(np.float32)
    return Demonstrations({"state": code}, code + 0.5, np.cumsum(lengths).astype(np.int64))


def brute_force(lengths: list[int], to: int, h: int, ta: int, drop: int = 0) -> list[tuple]:
    """Independent enumeration of (obs, action, is_pad) per window, episode-major."""
    out = []
    for e, n in enumerate(lengths):
        lo, hi = -(to - 1), n - h + (ta - 1) - drop
        for s in range(lo, max(hi, lo) + 1):
            obs = tuple((e, min(max(s + t, 0), n - 1)) for t in range(to))
            act = tuple((e + 0.5, min(max(s + t, 0), n - 1) + 0.5) for t in range(h))
            pad = tuple(not 0 <= s + t < n for t in range(h))
            out.append((obs, act, pad))
    return out


def as_tuples(buf: DemonstrationBuffer) -> list[tuple]:
    b = buf.window(torch.arange(len(buf)))
    obs, act, pad = b.obs["state"].tolist(), b.action.tolist(), b.action_is_pad.tolist()
    return [
        (tuple(map(tuple, o)), tuple(map(tuple, a)), tuple(p)) for o, a, p in zip(obs, act, pad, strict=True)
    ]


@pytest.mark.parametrize(
    "lengths,to,h,ta,drop",
    [
        ([20, 7, 33], 2, 16, 8, 0),  # Diffusion Policy PushT setting
        ([1, 3, 10], 2, 16, 8, 0),  # episodes shorter than the window, and L = 1
        ([5, 12], 1, 4, 4, 0),
        ([9, 30, 2], 3, 8, 2, 3),  # drop_n_last_frames
        ([4], 4, 4, 1, 0),
    ],
)
def test_windows_match_brute_force(lengths, to, h, ta, drop) -> None:
    buf = DemonstrationBuffer(encoded_demos(lengths), Window(to, h, ta, drop), normalization=RAW)
    expected = brute_force(lengths, to, h, ta, drop)
    assert len(buf) == buf.num_windows == len(expected)
    assert as_tuples(buf) == expected
    assert np.bincount(buf.episode_of_window.numpy()).tolist() == [
        sum(1 for w in expected if w[0][0][0] == e) for e in range(len(lengths))
    ]


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 25), min_size=1, max_size=5),
    to=st.integers(1, 4),
    extra=st.integers(0, 10),
    ta_frac=st.floats(0, 1),
    drop=st.integers(0, 4),
)
def test_windows_property(lengths, to, extra, ta_frac, drop) -> None:
    h = to + extra
    ta = 1 + int(ta_frac * (h - to))
    buf = DemonstrationBuffer(encoded_demos(lengths), Window(to, h, ta, drop), normalization=RAW)
    windows = as_tuples(buf)
    assert windows == brute_force(lengths, to, h, ta, drop)
    for obs, act, _ in windows:  # never crosses an episode boundary
        assert len({o[0] for o in obs}) == 1 and {a[0] - 0.5 for a in act} == {obs[0][0]}
    # every episode, however short, yields at least one window
    assert set(buf.episode_of_window.tolist()) == set(range(len(lengths)))


def test_short_episode_padding() -> None:
    buf = DemonstrationBuffer(encoded_demos([1]), Window(2, 16, 8), normalization=RAW)
    assert len(buf) == 1
    b = buf.window(torch.tensor([0]))
    assert b.obs["state"].tolist() == [[[0, 0], [0, 0]]]
    assert torch.equal(b.action, torch.full((1, 16, 2), 0.5))
    assert b.action_is_pad.tolist() == [[True, False] + [True] * 14]


def window_ids(buf: DemonstrationBuffer) -> dict[tuple, int]:
    return {(w[1], w[2]): i for i, w in enumerate(as_tuples(buf))}


def ids_of(batch, ids: dict[tuple, int]) -> list[int]:
    return [ids[(tuple(map(tuple, a)), tuple(p))] for a, p in zip(batch.action.tolist(), batch.action_is_pad.tolist(), strict=True)]


def test_uniform_sampling_over_windows() -> None:
    lengths = [3, 40]  # 1 short and 1 long episode: the long one must get ~all windows' share
    buf = DemonstrationBuffer(encoded_demos(lengths), Window(2, 8, 4), normalization=RAW)
    ids = window_ids(buf)
    gen = torch.Generator().manual_seed(0)
    n_samples = 400 * len(buf)
    counts = Counter(ids_of(buf.sample(n_samples, gen), ids))
    observed = np.array([counts[i] for i in range(len(buf))])
    expected = n_samples / len(buf)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    dof = len(buf) - 1
    assert chi2 < dof + 8 * np.sqrt(2 * dof), chi2  # ~8 sigma: non-flaky, still catches bias
    per_episode = np.bincount(buf.episode_of_window.numpy(), weights=observed)
    np.testing.assert_allclose(per_episode / n_samples, np.bincount(buf.episode_of_window.numpy()) / len(buf), atol=0.02)


def test_sampling_is_deterministic_given_generator() -> None:
    buf = DemonstrationBuffer(encoded_demos([10, 20]), Window(2, 8, 4))
    a = buf.sample(32, torch.Generator().manual_seed(7))
    b = buf.sample(32, torch.Generator().manual_seed(7))
    assert torch.equal(a.action, b.action) and torch.equal(a.obs["state"], b.obs["state"])


def test_shards_disjoint_and_covering() -> None:
    buf = DemonstrationBuffer(encoded_demos([6, 11, 4]), Window(2, 6, 3), normalization=RAW)
    ids = window_ids(buf)
    world = 3
    assert sum(buf.shard_size(r, world) for r in range(world)) == len(buf)
    seen = []
    for rank in range(world):
        got = set(ids_of(buf.sample(60 * len(buf), torch.Generator().manual_seed(rank), rank, world), ids))
        assert got == set(range(rank, len(buf), world))
        seen.append(got)
    assert set().union(*seen) == set(range(len(buf)))
    with pytest.raises(ValueError, match="rank"):
        buf.sample(4, rank=3, world_size=3)


def test_normalized_storage_and_images() -> None:
    rng = np.random.default_rng(0)
    n = 12
    images = rng.integers(0, 256, size=(n, 3, 4, 4)).astype(np.float32)  # integral floats
    demos = Demonstrations(
        {"agent_pos": rng.uniform(0, 512, (n, 2)), "image": images},
        rng.uniform(-5, 5, (n, 2)),
        np.array([5, 12]),
    )
    buf = DemonstrationBuffer(demos, Window(2, 4, 2))
    assert buf.normalizer.mode("image") == "image" and buf.normalizer.mode("agent_pos") == "min_max"
    assert buf._data["image"].dtype == torch.uint8  # 4x smaller than float32
    assert buf.obs_shapes == {"agent_pos": (2,), "image": (3, 4, 4)} and buf.action_dim == 2
    b = buf.window(torch.arange(len(buf)))
    assert b.obs["image"].dtype == torch.float32 and b.obs["image"].shape == (len(buf), 2, 3, 4, 4)
    assert b.obs["image"].min() >= 0 and b.obs["image"].max() <= 1
    assert b.action.dtype == torch.float32 and b.action.abs().max() <= 1 + 1e-6
    # window 0 starts at -1 (pad before): both obs steps show step 0
    torch.testing.assert_close(b.obs["image"][0, 1], torch.from_numpy(images[0]) / 255)
    torch.testing.assert_close(
        buf.normalizer.unnormalize("agent_pos", b.obs["agent_pos"][0, 1]),
        torch.from_numpy(demos.observations["agent_pos"][0]).float(),
    )
    # a non-image mode keeps the key as normalized float32
    buf2 = DemonstrationBuffer(demos, Window(2, 4, 2), normalization={"image": "mean_std"})
    assert buf2._data["image"].dtype == torch.float32


def test_read_only_inputs_without_warnings(recwarn: pytest.WarningsRecorder) -> None:
    demos = encoded_demos([4, 6])
    demos.observations["image"] = np.zeros((10, 1, 2, 2), np.uint8)
    for arr in (*demos.observations.values(), demos.actions):
        arr.setflags(write=False)
    buf = DemonstrationBuffer(demos, Window(2, 4, 2))
    assert buf.sample(3).obs["image"].shape == (3, 2, 1, 2, 2)
    assert not [w for w in recwarn if "writable" in str(w.message)]


def test_given_normalizer_is_used_and_checked() -> None:
    demos = encoded_demos([5, 8])
    fitted = Normalizer.fit({"state": np.zeros((1, 2)), "action": np.ones((2, 2)) * [0, 10]},
                            {"state": "identity", "action": "min_max"})
    buf = DemonstrationBuffer(demos, Window(2, 4, 2), normalizer=fitted)
    assert buf.normalizer is fitted
    expected = fitted.normalize("action", demos.actions[:1])
    torch.testing.assert_close(buf.window(torch.tensor([1])).action[0, 0], expected[0])
    wrong = Normalizer.fit({"state": np.zeros((1, 3)), "action": np.zeros((1, 2))},
                           {"state": "identity", "action": "identity"})
    with pytest.raises(ValueError, match="do not match"):
        DemonstrationBuffer(demos, Window(2, 4, 2), normalizer=wrong)
    with pytest.raises(RuntimeError, match="load_state_dict"):
        DemonstrationBuffer(demos, Window(2, 4, 2), normalizer=Normalizer.from_spec(fitted.spec()))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(normalization={"img": "image"}), "unknown keys"),
        (dict(normalization={"state": "zscore"}), "'state'"),
    ],
)
def test_argument_validation(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        DemonstrationBuffer(encoded_demos([5]), Window(2, 4, 2), **kwargs)


def test_the_buffer_cuts_the_window_it_is_given() -> None:
    """The window is checked by ``Window`` (test_window.py); the buffer uses it as given."""
    window = Window(n_obs_steps=2, horizon=4, n_action_steps=2, drop_n_last_frames=1)
    buf = DemonstrationBuffer(encoded_demos([6]), window)
    assert buf.window_spec is window
    with pytest.raises(TypeError, match="window must be a rlox_dp.Window"):
        DemonstrationBuffer(encoded_demos([6]), (2, 4, 2))  # the int form is gone: one Window
    assert (buf.n_obs_steps, buf.horizon, buf.n_action_steps) == (2, 4, 2)
    # starts -1 .. 6 - 4 + 1 - 1 = 2: four windows
    assert len(buf) == 4


def test_data_validation() -> None:
    ok = encoded_demos([3, 4])
    bad = [
        (Demonstrations({"state": np.zeros((0, 2))}, np.zeros((0, 2)), np.zeros(0, np.int64)), "empty"),
        (Demonstrations({"state": ok.observations["state"]}, ok.actions[:, 0], ok.episode_ends), "actions"),
        (Demonstrations({"state": ok.observations["state"][:6]}, ok.actions, ok.episode_ends), "'state'.*6 steps"),
        (Demonstrations(ok.observations, ok.actions, np.array([4, 3])), "episode_ends.*increasing"),
        (Demonstrations(ok.observations, ok.actions, np.array([3, 6])), r"episode_ends\[-1\]"),
        (Demonstrations({}, ok.actions, ok.episode_ends), "observations"),
    ]
    for demos, match in bad:
        with pytest.raises(ValueError, match=match):
            DemonstrationBuffer(demos, Window(1, 2, 1))
    nan_obs = ok.observations["state"].copy()
    nan_obs[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"'state'.*step 5 \(episode 1, step 2"):
        DemonstrationBuffer(Demonstrations({"state": nan_obs}, ok.actions, ok.episode_ends), Window(1, 2, 1))
    inf_act = ok.actions.copy()
    inf_act[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"'action'.*step 0 \(episode 0"):
        DemonstrationBuffer(Demonstrations(ok.observations, inf_act, ok.episode_ends), Window(1, 2, 1))


def test_window_index_checks() -> None:
    buf = DemonstrationBuffer(encoded_demos([5]), Window(1, 2, 1))
    with pytest.raises(IndexError, match=r"\[0, 4\)"):
        buf.window(torch.tensor([4]))
    with pytest.raises(ValueError, match="long"):
        buf.window(torch.tensor([0.0]))


def test_sample_timing() -> None:
    rng = np.random.default_rng(0)
    lengths = [150] * 100
    n = sum(lengths)
    demos = Demonstrations({"state": rng.normal(size=(n, 20))}, rng.normal(size=(n, 2)), np.cumsum(lengths))
    buf = DemonstrationBuffer(demos, Window(2, 16, 8))
    gen = torch.Generator().manual_seed(0)
    buf.sample(256, gen)
    wall, cpu = [], []
    for _ in range(50):
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        batch = buf.sample(256, gen)
        wall.append(time.perf_counter() - start_wall)
        cpu.append(time.process_time() - start_cpu)
    assert batch.obs["state"].shape == (256, 2, 20) and batch.action.shape == (256, 16, 2)
    wall_ms, cpu_ms = 1e3 * float(np.median(wall)), 1e3 * float(np.median(cpu))
    print(f"sample(256), obs dim 20, To=2, H=16: median {wall_ms:.3f} ms wall, {cpu_ms:.3f} ms CPU")
    assert wall_ms < 20  # typical: ~0.2 ms on 2 busy CPU cores


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_storage() -> None:
    buf = DemonstrationBuffer(encoded_demos([6, 9]), Window(2, 4, 2), device="cuda")
    batch = buf.sample(8, torch.Generator(device="cuda").manual_seed(0))
    assert batch.action.is_cuda and batch.obs["state"].is_cuda and batch.action_is_pad.is_cuda
    cpu = DemonstrationBuffer(encoded_demos([6, 9]), Window(2, 4, 2))
    idx = torch.arange(len(cpu))
    torch.testing.assert_close(buf.window(idx).action.cpu(), cpu.window(idx).action)
