"""``compile_model``: torch.compile'd networks give the eager outputs."""

from __future__ import annotations

import shutil

import pytest
import torch
from test_algorithms import build

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="torch.compile on CPU needs a C compiler")


def test_compiled_and_eager_outputs_match():
    eager, buffer = build("diffusion", num_train_timesteps=5)
    compiled, _ = build("diffusion", num_train_timesteps=5)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_networks(dynamic=False)
    obs = {"state": torch.randn(3, 2, 3)}
    a = eager.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    b = compiled.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    batch = buffer.sample(8, generator=torch.Generator().manual_seed(1))
    la, _ = eager.compute_loss(batch, torch.Generator().manual_seed(2))
    lb, _ = compiled.compute_loss(batch, torch.Generator().manual_seed(2))
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)
