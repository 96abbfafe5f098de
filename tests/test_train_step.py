"""The training loop's parts: TrainStep (non-finite steps skipped on the device, checked later),
user callbacks (stop, hooks, evaluations), and the data-parallel slice handed to the loss."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY, pendulum_demos

from rlox_dp import NonFiniteLossError, Trainer
from rlox_dp.checkpoint import read_checkpoint_header
from rlox_dp.distributed import GlobalBatch
from rlox_dp.training import Callback, StepResult, TrainStep


def make(tmp_path, algo: str = "bc", **overrides) -> Trainer:
    return Trainer(algo, env="Pendulum-v1", config={**TINY[algo], **overrides}, demos=pendulum_demos(), seed=0,
                   device="cpu", log_dir=tmp_path / "run", progress=False, preset=False)


def poison_call(trainer: Trainer, bad_calls: set[int]) -> None:
    """Make the loss NaN on the given (0-based) calls of ``compute_loss``."""
    original, calls = trainer.policy.compute_loss, {"n": 0}

    def loss(batch, generator=None, **kwargs):
        value, info = original(batch, generator, **kwargs)
        calls["n"] += 1
        return (value * float("nan"), info) if calls["n"] - 1 in bad_calls else (value, info)

    trainer.policy.compute_loss = loss


class Snapshots(Callback):
    """Weights, EMA weights and optimizer moments after every step."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_step(self, trainer: Trainer, result: StepResult) -> None:
        state = {f"w/{k}": v.clone() for k, v in trainer.policy.state_dict().items()}
        state.update({f"ema/{k}": v.clone() for k, v in trainer.ema.model.state_dict().items()})
        for i, s in trainer.optimizer.state.items():
            state.update({f"opt/{id(i)}/{k}": v.clone() for k, v in s.items()})
        self.after[result.step] = state


def test_a_nan_batch_leaves_weights_and_optimizer_unchanged_and_is_named(tmp_path):
    trainer = make(tmp_path, log_every=5, checkpoint_every=100, use_ema=True)
    poison_call(trainer, {2})
    snaps = Snapshots()
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss or gradients at step 2 \(1 of steps 0\.\.4\)"):
        trainer.train(20, evaluate=False, callbacks=[snaps])
    assert sorted(snaps.after) == [0, 1, 2, 3]  # stopped by the first check (logging, after step 4)
    before, after = snaps.after[1], snaps.after[2]
    for k, v in before.items():
        if k.startswith(("w/", "opt/")):
            assert torch.equal(after[k], v), k  # the bad step's update was skipped
        assert torch.isfinite(after[k]).all(), k
    moved = [k for k in before if k.startswith("w/") and not torch.equal(snaps.after[3][k], after[k])]
    assert moved  # the good steps after it trained
    # EMA: folded in the unchanged (finite) weights only
    assert all(torch.isfinite(v).all() for k, v in snaps.after[3].items() if k.startswith("ema/"))
    assert all(torch.isfinite(p).all() for p in trainer.ema.model.parameters())


def test_the_check_runs_before_a_checkpoint_is_written(tmp_path):
    trainer = make(tmp_path, log_every=100, checkpoint_every=3)
    poison_call(trainer, {4})
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        trainer.train(20, evaluate=False)
    names = sorted(p.name for p in (trainer.log_dir / "checkpoints").glob("step_*.safetensors"))
    assert names == ["step_000003.safetensors"]  # step 6 was refused: it came after the bad step


def test_the_check_runs_at_the_end(tmp_path):
    trainer = make(tmp_path, log_every=100, checkpoint_every=100)
    poison_call(trainer, {5})
    with pytest.raises(NonFiniteLossError, match="at step 5"):
        trainer.train(7, evaluate=False)
    assert not (trainer.log_dir / "checkpoints" / "last.safetensors").exists()


def test_an_optimizer_without_found_inf_skips_after_a_sync():
    p = torch.nn.Parameter(torch.ones(3))
    step = TrainStep.__new__(TrainStep)  # only the optimizer part
    step.optimizer = torch.optim.AdamW([p], lr=0.1, foreach=False)
    p.grad = torch.full((3,), float("nan"))
    step._optimizer_step_unless(torch.tensor(True))
    assert torch.equal(p.detach(), torch.ones(3)) and not step.optimizer.state
    p.grad = torch.ones(3)
    step._optimizer_step_unless(torch.tensor(False))
    assert not torch.equal(p.detach(), torch.ones(3))


class Recorder(Callback):
    """Hook calls; stops training after ``stop_after`` steps."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.stop_after, self.calls = stop_after, []

    def on_train_start(self, trainer, total_steps):
        self.calls.append(("start", trainer.state.step, total_steps))

    def on_step(self, trainer, result):
        self.calls.append(("step", result.step))
        assert trainer.state.step == result.step + 1 and result.loss.shape == ()
        return None if self.stop_after is None else trainer.state.step < self.stop_after

    def on_evaluation(self, trainer, summary):
        self.calls.append(("eval", trainer.state.step))

    def on_train_end(self, trainer, metrics):
        self.calls.append(("end", trainer.state.step, metrics["interrupted"]))


def test_callbacks_see_every_hook_and_evaluation_in_order(tmp_path):
    rec = Recorder()
    trainer = make(tmp_path, eval_every=2, n_eval_episodes=1, n_eval_envs=1)
    metrics = trainer.train(3, callbacks=[rec])
    # the built-in callbacks run first: step 1's in-loop evaluation comes before our on_step
    assert rec.calls == [("start", 0, 3), ("step", 0), ("eval", 2), ("step", 1), ("step", 2),
                         ("eval", 3), ("end", 3, 0.0)]
    assert [e["step"] for e in trainer.eval_history] == [2.0, 3.0] and "eval/return_mean" in metrics
    assert list(metrics)[:5] == ["loss", "step", "train_time_s", "steps_per_s", "interrupted"]


def test_a_callback_returning_false_stops_training_with_a_checkpoint(tmp_path):
    trainer = make(tmp_path, checkpoint_every=100)
    metrics = trainer.train(10, evaluate=False, callbacks=[Recorder(stop_after=4)])
    assert metrics["step"] == 4 and trainer.state.step == 4 and metrics["interrupted"] == 0.0
    assert read_checkpoint_header(trainer.log_dir / "checkpoints" / "last.safetensors")["step"] == 4
    with pytest.raises(TypeError, match="Callback instances"):
        trainer.train(6, callbacks=[lambda trainer, result: None])


@pytest.mark.parametrize("algo", ["diffusion", "flow"])
def test_the_global_batch_slice_draws_the_rows_of_one_global_draw(algo, tmp_path):
    """Two halves of a batch, each told where it sits, draw the noise of the whole batch: their
    losses average to the loss of the whole batch (no padded windows, so the means weigh alike)."""
    trainer = Trainer(algo, env="Pendulum-v1", config=TINY["diffusion"], demos=pendulum_demos(), seed=0,
                      device="cpu", log_dir=tmp_path / algo, progress=False, preset=False)
    policy, buffer = trainer.policy.eval(), trainer.buffer
    batch = buffer.window(torch.arange(10, 14))  # early windows: no padding after the episode end
    assert not batch.action_is_pad.any()

    def loss(b, gb):
        return policy.compute_loss(b, torch.Generator().manual_seed(5), global_batch=gb)[0]

    whole = loss(batch, None)
    halves = [loss(buffer.window(torch.arange(10 + o, 12 + o)), GlobalBatch(4, o)) for o in (0, 2)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, whole)
    assert not torch.allclose(loss(buffer.window(torch.arange(12, 14)), None), halves[1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (host-device syncs)")
def test_a_cuda_step_never_waits_for_the_device(tmp_path):
    """No host sync in sample_batch + TrainStep (the old per-step isfinite check had one)."""
    from rlox_dp.training import sample_batch

    trainer = Trainer("diffusion", env="Pendulum-v1", config=TINY["diffusion"], demos=pendulum_demos(), seed=0,
                      device="cuda", log_dir=tmp_path / "run", progress=False, preset=False)
    state, buffer = trainer.state, trainer.buffer

    def step(i: int) -> None:
        batch, gb = sample_batch(buffer, 32, state.data_generator, trainer.device, trainer.dist)
        trainer.train_step(batch, step=i, total_steps=10, generator=state.model_generator, global_batch=gb)

    step(0)  # lazy initializations may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, 4):
            step(i)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.train_step.check_finite()
