"""95 % intervals the benchmarks report: a t interval for means, Wilson's for success rates."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["mean_interval", "wilson_interval"]


def mean_interval(values: np.ndarray, bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, float]:
    """Mean and 95 % t interval (normal quantile past 30 samples) of ``values`` ``(n,)``.

    The interval is clipped to ``bounds``, the range the values can take (scores lie in [0, 1]).
    """
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return {"mean": mean, "low": mean, "high": mean, "n": n}
    # two-sided 97.5 % t quantiles for small n; 1.96 beyond
    t_table = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
               10: 2.23, 15: 2.13, 20: 2.09, 30: 2.04}
    dof = n - 1
    quantile = 1.96 if dof > 30 else t_table[max(k for k in t_table if k <= dof)]
    half = quantile * float(np.std(values, ddof=1)) / math.sqrt(n)
    return {"mean": mean, "low": max(bounds[0], mean - half), "high": min(bounds[1], mean + half),
            "n": n}


def wilson_interval(successes: int, n: int, z: float = 1.96) -> dict[str, float]:
    """Success rate ``successes / n`` with its 95 % Wilson score interval."""
    if n < 1:
        raise ValueError(f"n: expected a positive number of trials, got {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return {"mean": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n}
