"""Tests for rlox_dp.buffers.normalizer: statistics, round trips, spec/state_dict restore."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from rlox_dp.buffers import NORM_MODES, Normalizer


def _fit(x: np.ndarray, mode: str, key: str = "x") -> Normalizer:
    return Normalizer.fit({key: x}, {key: mode})


data_strategy = st.tuples(st.integers(1, 12), st.integers(1, 4)).flatmap(
    lambda nd: arrays(np.float64, nd, elements=st.floats(-1e3, 1e3, allow_nan=False, width=32))
)


@settings(max_examples=60, deadline=None)
@given(x=data_strategy, mode=st.sampled_from(["min_max", "mean_std", "identity"]))
def test_round_trip_and_ranges(x: np.ndarray, mode: str) -> None:
    norm = _fit(x, mode)
    y = norm.normalize("x", x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.isfinite(y).all()
    back = norm.unnormalize("x", y).double().numpy()
    tol = 1e-5 * (1.0 + np.abs(x).max())
    np.testing.assert_allclose(back, x, atol=tol, rtol=0)
    if mode == "min_max":
        span = x.max(0) - x.min(0)
        # float32 rounding of x and of the stats, relative to the feature's range
        slack = 1e-5 + 1e-6 * np.abs(x).max(0) / np.maximum(span, 1e-4)
        assert np.all(y.numpy() >= -1 - slack) and np.all(y.numpy() <= 1 + slack)
        wide = span > 1e-2  # these features must actually reach both ends
        np.testing.assert_allclose(y.min(0).values.numpy()[wide], -1, atol=1e-4)
        np.testing.assert_allclose(y.max(0).values.numpy()[wide], 1, atol=1e-4)
    if mode == "mean_std":
        spread = x.std(0) > 1e-2
        np.testing.assert_allclose(y.double().mean(0).numpy(), 0, atol=1e-3)
        np.testing.assert_allclose(y.double().std(0, unbiased=False).numpy()[spread], 1, atol=1e-3)


@pytest.mark.parametrize("mode", ["min_max", "mean_std"])
def test_constant_dims_map_to_zero(mode: str) -> None:
    x = np.stack([np.full(5, 3.5), np.linspace(0, 1, 5), np.full(5, -2.0)], axis=1)
    norm = _fit(x, mode)
    y = norm.normalize("x", x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[:, 0], torch.zeros(5)) and torch.equal(y[:, 2], torch.zeros(5))
    assert y[:, 1].abs().max() > 0.5
    np.testing.assert_allclose(norm.unnormalize("x", y).numpy(), x, atol=1e-6)


def test_image_mode_and_leading_dims() -> None:
    img = np.random.default_rng(0).integers(0, 256, size=(4, 3, 5, 5), dtype=np.uint8)
    norm = _fit(img, "image", key="image")
    batch = torch.from_numpy(img).reshape(2, 2, 3, 5, 5)
    y = norm.normalize("image", batch)
    assert y.dtype == torch.float32 and y.shape == (2, 2, 3, 5, 5)
    torch.testing.assert_close(y, batch.float() / 255)
    assert 0 <= y.min() and y.max() <= 1
    torch.testing.assert_close(norm.unnormalize("image", y), batch.float())
    with pytest.raises(ValueError, match="0..255"):
        _fit(img.astype(np.float32) * 2, "image")


def test_float64_input_gives_float32_with_any_leading_dims() -> None:
    x = np.random.default_rng(1).normal(size=(30, 3))
    norm = _fit(x, "mean_std")
    y = norm.normalize("x", torch.from_numpy(x).reshape(5, 2, 3, 3))
    assert y.dtype == torch.float32 and y.shape == (5, 2, 3, 3)
    assert norm.normalize("x", x[0]).shape == (3,)


def test_errors_name_key_and_choices() -> None:
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"'obs'.*min_max.*mean_std.*identity.*image"):
        Normalizer.fit({"obs": x}, {"obs": "zscore"})  # type: ignore[dict-item]
    bad = np.ones((3, 2))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="'obs'.*NaN"):
        Normalizer.fit({"obs": bad}, {"obs": "min_max"})
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="'obs'"):
        Normalizer.fit({"obs": bad}, {"obs": "identity"})
    with pytest.raises(ValueError, match="modes must name exactly"):
        Normalizer.fit({"obs": x}, {"obs": "min_max", "action": "min_max"})
    norm = Normalizer.fit({"obs": x, "action": x}, {"obs": "min_max", "action": "min_max"})
    with pytest.raises(KeyError, match=r"'state'.*\['obs', 'action'\]"):
        norm.normalize("state", x)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        norm.normalize("obs", np.zeros((3, 4)))
    assert NORM_MODES == ("min_max", "mean_std", "identity", "image")


def test_spec_state_dict_round_trip() -> None:
    rng = np.random.default_rng(2)
    data = {
        "observation.state": rng.normal(size=(20, 4)),
        "image": rng.integers(0, 256, size=(20, 3, 4, 4)).astype(np.uint8),
        "action": rng.uniform(-3, 3, size=(20, 2)),
    }
    modes = {"observation.state": "mean_std", "image": "image", "action": "min_max"}
    norm = Normalizer.fit(data, modes)
    assert norm.keys == tuple(data) and norm.mode("image") == "image"
    spec = json.loads(json.dumps(norm.spec()))
    assert spec["observation.state"] == {"mode": "mean_std", "shape": [4]}
    restored = Normalizer.from_spec(spec)
    with pytest.raises(RuntimeError, match="load_state_dict"):
        restored.normalize("action", data["action"])
    restored.load_state_dict(norm.state_dict())
    for key, x in data.items():
        assert torch.equal(restored.normalize(key, x), norm.normalize(key, x))


def test_restore_as_child_module() -> None:
    class Policy(nn.Module):
        def __init__(self, normalizer: Normalizer) -> None:
            super().__init__()
            self.normalizer = normalizer
            self.net = nn.Linear(2, 2)

    x = np.random.default_rng(3).normal(size=(10, 2))
    source = Policy(Normalizer.fit({"action": x}, {"action": "min_max"}))
    target = Policy(Normalizer.from_spec(source.normalizer.spec()))
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.normalizer.normalize("action", x), source.normalizer.normalize("action", x))
    moved = target.to(torch.float32)  # .to() keeps the statistics usable
    assert moved.normalizer.normalize("action", x).dtype == torch.float32


def test_key_sanitizing_and_clash() -> None:
    x = np.zeros((2, 1))
    norm = Normalizer.fit({"a.b": x}, {"a.b": "identity"})
    assert all("." not in name for name in norm.state_dict())
    with pytest.raises(ValueError, match="same buffer name"):
        Normalizer.fit({"a.b": x, "a_b": x}, {"a.b": "identity", "a_b": "identity"})
    with pytest.raises(ValueError, match="shape"):
        Normalizer.from_spec({"a": {"mode": "min_max", "shape": [0]}})
