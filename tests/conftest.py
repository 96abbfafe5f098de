"""Shared fixtures (helpers shared by the test modules live in ``helpers.py``)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from helpers import pendulum_demos  # noqa: E402

from rlox_dp.buffers import Demonstrations  # noqa: E402


@pytest.fixture
def demos() -> Demonstrations:
    return pendulum_demos()


@pytest.fixture(autouse=True)
def _few_threads():
    """Keep torch from oversubscribing the 2 cores when tests run beside other work."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
