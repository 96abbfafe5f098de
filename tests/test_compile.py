"""``compile_model``: torch.compile'd networks and denoising loops give the eager outputs."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
from helpers import build

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="torch.compile on CPU needs a C compiler")


def eager_and_compiled(num_train_timesteps: int):
    """Two equal diffusion policies, the second with compile_networks(); and the demo buffer."""
    eager, buffer = build("diffusion", num_train_timesteps=num_train_timesteps)
    compiled, _ = build("diffusion", num_train_timesteps=num_train_timesteps)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_networks(dynamic=False)
    return eager, compiled, buffer


def test_compiled_and_eager_outputs_match():
    eager, compiled, buffer = eager_and_compiled(5)
    obs = {"state": torch.randn(3, 2, 3)}
    with torch.no_grad():  # DDPM, 5 noisy steps: the whole loop is one compiled graph
        a = eager.predict_action_chunk(obs, torch.Generator().manual_seed(0))
        b = compiled.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    assert [len(plan) for plan in compiled.acceleration._loops] == [5]
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    batch = buffer.sample(8, generator=torch.Generator().manual_seed(1))
    la, _ = eager.compute_loss(batch, torch.Generator().manual_seed(2))
    lb, _ = compiled.compute_loss(batch, torch.Generator().manual_seed(2))
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)


def test_compiled_denoising_loop_matches_eager():
    """Few-step samplers run one compiled loop, longer ones the compiled networks per step."""
    eager, compiled, _ = eager_and_compiled(20)
    obs = {"state": torch.randn(1, 2, 3)}
    for kind, steps, loop in (("DDIM", 3, True), ("DDPM", 20, False)):
        for policy in (eager, compiled):
            policy.eval()
            policy.configure_inference(kind, steps)
        with torch.no_grad():
            a = eager.predict_action_chunk(obs, torch.Generator().manual_seed(3))
            b = compiled.predict_action_chunk(obs, torch.Generator().manual_seed(3))
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert (steps in {len(plan) for plan in compiled.acceleration._loops}) == loop
    for policy in (eager, compiled):
        policy.configure_inference("DDIM", 3)
    copied = copy.deepcopy(compiled)  # e.g. an EMA copy: compiled loops are rebuilt, not copied
    assert copied.acceleration._loops == {}
    with torch.no_grad():
        c = copied.predict_action_chunk(obs, torch.Generator().manual_seed(3))
        a = eager.predict_action_chunk(obs, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


def test_each_compiled_loop_has_its_own_graph_cache():
    """torch.compile caches per code object and runs eager past its recompile limit: the loops of
    different step counts must not share one cache (here with a limit of 1)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    policy, _ = build("diffusion", num_train_timesteps=20)
    policy.eval()
    policy.compile_networks(dynamic=False)
    obs = {"state": torch.randn(1, 2, 3)}
    counters.clear()
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        for steps in (2, 3, 4):
            policy.configure_inference("DDIM", steps)
            policy.predict_action_chunk(obs)
    assert counters["stats"]["unique_graphs"] == 3
