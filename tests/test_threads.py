"""Torch thread selection for CPU work: the rule, who wins (explicit count, OMP_NUM_THREADS, the
user's torch.set_num_threads, automatic), the FLOP probe, and the Trainer / CLI overrides."""

from __future__ import annotations

import logging

import pytest
import torch
from helpers import TINY, pendulum_demos
from hypothesis import given
from hypothesis import strategies as st

from rlox_dp import ConfigError, Trainer
from rlox_dp import threads as th


@pytest.mark.parametrize(
    ("usable", "busy", "flops", "ranks", "expected"),
    [
        (2, 0.0, None, 1, 2),      # idle 2-core machine, work unknown: both cores
        (2, 1.0, None, 1, 1),      # one busy neighbour: one thread (the case)
        (2, 0.4, None, 1, 2),      # a neighbour busy 40 % of the time: rounds to 2 free
        (2, 9.3, 3e9, 1, 1),       # overloaded: never fewer than one
        (16, 3.4, None, 1, 13),    # 12.6 free cores round to 13
        (16, 0.0, 2.5e6, 1, 2),    # small matmuls: 2.5 MFLOP -> 2 threads, not 16
        (16, 0.0, 0.3e6, 1, 1),    # a tiny network: one thread
        (8, 0.0, None, 2, 4),      # two torchrun ranks share the free cores
        (8, 0.0, 1e12, 3, 2),      # 8 // 3
    ],
)
def test_rule(usable, busy, flops, ranks, expected):
    assert th.choose_num_threads(usable, busy, flops, ranks) == expected


@given(usable=st.integers(1, 256), busy=st.floats(0, 512), busy2=st.floats(0, 512),
       flops=st.floats(0, 1e12), flops2=st.floats(0, 1e12))
def test_rule_bounds_and_monotonicity(usable, busy, busy2, flops, flops2):
    n = th.choose_num_threads(usable, busy, flops)
    assert 1 <= n <= usable
    assert n <= th.choose_num_threads(usable, busy, None)
    lo, hi = sorted([busy, busy2])
    assert th.choose_num_threads(usable, hi, flops) <= th.choose_num_threads(usable, lo, flops)
    lo, hi = sorted([flops, flops2])
    assert th.choose_num_threads(usable, busy, lo) <= th.choose_num_threads(usable, busy, hi)


def test_cpu_load_is_within_bounds():
    load = th.cpu_load(samples=3, interval_s=0.001)
    assert load.usable_cores >= 1 and load.busy >= 0.0


@pytest.fixture
def auto(monkeypatch):
    """Automatic selection on a pretend 4-core machine with one busy core; torch restored after."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(th, "cpu_load", lambda: th.CpuLoad(usable_cores=4, busy=1.0))
    monkeypatch.setattr(th, "_STARTUP_THREADS", torch.get_num_threads())
    monkeypatch.setitem(th._state, "ours", None)
    monkeypatch.setitem(th._state, "logged", {})
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_automatic_choice_is_set_and_logged(auto, caplog):
    with caplog.at_level(logging.INFO, logger="rlox_dp"):
        assert th.configure_threads(None, "cpu", what="training") == 3
    assert torch.get_num_threads() == 3
    assert "torch threads for training: 3 (automatic: 4 usable cores, 1.0 busy" in caplog.text
    assert th.configure_threads(None, "cpu", flops_per_op=1.5e6) == 1  # small work, still ours
    assert torch.get_num_threads() == 1


def test_explicit_count_wins_then_the_users_own_setting_is_kept(auto, monkeypatch):
    assert th.configure_threads(2, "cpu") == 2 and torch.get_num_threads() == 2
    torch.set_num_threads(5)  # the user's own choice (neither startup's nor ours): kept
    assert th.configure_threads(None, "cpu") == 5
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(th._state["ours"])
    assert th.configure_threads(None, "cpu") == 2  # OMP_NUM_THREADS: kept as it is
    assert th.configure_threads(None, "cuda") == 2  # GPU work: left alone
    with pytest.raises(ValueError, match="threads must be a positive int"):
        th.configure_threads(0, "cpu")


def test_restore_after_evaluation_keeps_automatic_control(auto):
    th.configure_threads(None, "cpu", what="training")  # 3
    before = torch.get_num_threads()
    th.configure_threads(None, "cpu", flops_per_op=1e5, what="evaluation")  # 1
    th.restore_threads(before)
    assert torch.get_num_threads() == 3
    assert th.configure_threads(None, "cpu", flops_per_op=1e5) == 1  # still chosen automatically


def _trainer(tmp_path, **kwargs):
    config = {**TINY["bc"], **kwargs.pop("config", {})}
    return Trainer("bc", env="Pendulum-v1", demos=pendulum_demos(), config=config, device="cpu",
                   log_dir=tmp_path / "run", progress=False, preset=False, **kwargs)


def test_trainer_and_config_overrides_win(auto, tmp_path):
    trainer = _trainer(tmp_path, threads=2)
    trainer.train(2, evaluate=False)
    assert torch.get_num_threads() == 2
    trainer = _trainer(tmp_path / "b", config={"threads": 3})
    assert trainer.threads == 3 and "threads" not in {**trainer.config.to_dict(), **trainer.training.to_dict()}
    trainer.evaluate(n_episodes=1, n_envs=1)
    assert torch.get_num_threads() == 3
    with pytest.raises(ConfigError, match="threads given twice"):
        _trainer(tmp_path / "c", threads=1, config={"threads": 2})


def test_trainer_chooses_by_network_size(auto, tmp_path):
    """The tiny test network's matmuls are far below 1 MFLOP: one thread despite 3 free cores."""
    trainer = _trainer(tmp_path)
    assert trainer._flops_per_sample * trainer.training.batch_size < th.MIN_FLOPS_PER_THREAD
    trainer.train(2, evaluate=False)
    assert torch.get_num_threads() == 1


def test_flop_probe_scales_with_width_and_has_no_side_effects(tmp_path):
    small = _trainer(tmp_path / "a", config={"hidden_dim": 64}).policy
    wide = _trainer(tmp_path / "b", config={"hidden_dim": 256}).policy
    ratio = th.policy_flops_per_sample(wide) / th.policy_flops_per_sample(small)
    assert 3.0 < ratio <= 16.0  # hidden x hidden layers: 16x the FLOPs, spread over as many weights
    small.train()
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    th.policy_flops_per_sample(small)
    torch.testing.assert_close(torch.rand(2), expected)
    assert small.training


def test_training_follows_a_neighbour_that_arrives_later(auto, monkeypatch, tmp_path, caplog):
    """Chosen with an idle machine, the count drops once a neighbour takes the cores (re-checked)."""
    loads = iter([0.0, 0.0] + [3.0] * 1000)  # idle at set-up and the first choice, then 3 busy
    monkeypatch.setattr(th, "cpu_load", lambda: th.CpuLoad(usable_cores=4, busy=next(loads)))
    monkeypatch.setattr(th, "MIN_FLOPS_PER_THREAD", 1.0)  # free cores decide, not network size
    monkeypatch.setattr(th, "RECHECK_S", 0.0)
    trainer = _trainer(tmp_path)
    with caplog.at_level(logging.INFO, logger="rlox_dp"):
        trainer.train(12, evaluate=False)
    counts = [int(r.getMessage().split(": ")[1].split(" ")[0]) for r in caplog.records
              if r.getMessage().startswith("torch threads for training")]
    assert counts[0] == 4 and counts[-1] == 1
    assert torch.get_num_threads() == 1
    pinned = _trainer(tmp_path / "pinned", threads=2)  # an explicit count is never re-chosen
    pinned.train(12, evaluate=False)
    assert torch.get_num_threads() == 2
