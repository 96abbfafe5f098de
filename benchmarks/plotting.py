"""Matplotlib for the benchmark figures: an optional dependency, the ``bench`` extra
(``pip install -e ".[bench]"``; ``.[dev]`` includes it). Imported only by the scripts that plot,
and only when they plot, so the library and the tests of the other scripts do not need it.
"""

from __future__ import annotations

from types import ModuleType

BENCH_EXTRA_HINT = 'pip install -e ".[bench]"  (or pip install "matplotlib>=3.7")'


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` with the non-interactive Agg backend (figures go to files).

    Benchmarks call it at their start too, so a missing matplotlib stops them before hours of
    training rather than at the final plot.

    Raises:
        ImportError: matplotlib is not installed; the message names the ``bench`` extra.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            f"the benchmark figures need matplotlib, which is not installed: {BENCH_EXTRA_HINT}"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
