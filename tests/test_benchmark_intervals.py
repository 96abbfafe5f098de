"""benchmarks/intervals.py: the Wilson and t intervals every benchmark reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import load_benchmark


@pytest.fixture(scope="module")
def intervals():
    return load_benchmark("intervals")


def test_wilson_interval_closed_form(intervals):
    # 30 / 50: p = 0.6, z = 1.96 -> the textbook Wilson interval [0.4618, 0.7239]
    ci = intervals.wilson_interval(30, 50)
    assert ci["mean"] == 0.6
    assert ci["low"] == pytest.approx(0.4618, abs=1e-4) and ci["high"] == pytest.approx(0.7239, abs=1e-4)
    # all successes: the upper end is 1, the lower one stays below 1 (unlike the normal interval)
    ci = intervals.wilson_interval(50, 50)
    assert ci["high"] == 1.0 and 0.92 < ci["low"] < 0.93
    with pytest.raises(ValueError, match="n: expected a positive"):
        intervals.wilson_interval(0, 0)


def test_mean_interval_matches_t_quantiles(intervals):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.4, 0.6, size=50)
    ci = intervals.mean_interval(x)
    half = 1.96 * x.std(ddof=1) / math.sqrt(50)
    assert ci["mean"] == pytest.approx(x.mean())
    assert ci["high"] - ci["mean"] == pytest.approx(half)
    small = intervals.mean_interval(np.array([0.4, 0.5, 0.6]))  # t(2) = 4.30, sd 0.1
    assert small["high"] - small["mean"] == pytest.approx(4.30 * 0.1 / math.sqrt(3))
    clipped = intervals.mean_interval(np.array([0.0, 1.0, 1.0]))
    assert clipped["low"] >= 0.0 and clipped["high"] <= 1.0
