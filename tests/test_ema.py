"""The EMA of the weights: the original repo's warmup schedule, update counting and averaging."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from rlox_dp.ema import EMA, ema_decay


def original_get_decay(optimization_step: int, power: float, inv_gamma: float,
                       min_value: float, max_value: float, update_after_step: int = 0) -> float:
    """diffusion_policy/model/diffusion/ema_model.py ``EMAModel.get_decay``, transcribed."""
    step = max(0, optimization_step - update_after_step - 1)
    value = 1 - (1 + step / inv_gamma) ** -power
    if step <= 0:
        return 0.0
    return max(min_value, min(value, max_value))


def test_first_decays_are_the_originals():
    decays = [ema_decay(n, 0.75, 1.0, 0.0, 0.9999) for n in range(4)]
    assert decays[:2] == [0.0, 0.0]  # the first two updates copy the weights
    assert decays[2] == pytest.approx(1 - 2 ** -0.75) == pytest.approx(0.405, abs=1e-3)
    assert decays[3] == pytest.approx(1 - 3 ** -0.75) == pytest.approx(0.561, abs=1e-3)


@given(n=st.integers(0, 10**7), power=st.floats(0.1, 2.0), inv_gamma=st.floats(0.1, 10.0),
       low=st.floats(0.0, 0.5), high=st.floats(0.5, 0.99999))
def test_decay_equals_the_original_formula(n, power, inv_gamma, low, high):
    assert ema_decay(n, power, inv_gamma, low, high) == original_get_decay(n, power, inv_gamma, low, high)


def test_updates_count_and_average_like_the_original():
    """Three updates: two copies, then ``ema = 0.405 * ema + 0.595 * weights``."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model)
    history = []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        history.append([p.detach().clone() for p in model.parameters()])
        ema.update(model)
    assert ema.step == 3
    decay = 1 - 2 ** -0.75
    for p_ema, p1, p2 in zip(ema.model.parameters(), history[1], history[2], strict=True):
        torch.testing.assert_close(p_ema, decay * p1 + (1 - decay) * p2)


def test_buffers_are_copied_not_averaged():
    model = nn.BatchNorm1d(2)
    ema = EMA(model)
    model.running_mean.fill_(5.0)
    ema.update(model)
    ema.update(model)
    model.running_mean.fill_(7.0)
    ema.update(model)
    torch.testing.assert_close(ema.model.running_mean, torch.full((2,), 7.0))
