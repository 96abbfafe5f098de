"""Data-parallel training (DDP, gloo on CPU): 2 processes == 1 process with the global batch."""

from __future__ import annotations

import json
import os

import torch
import torch.multiprocessing as mp
from helpers import TINY, free_port, pendulum_demos, record_losses

from rlox_dp import Trainer

STEPS = 5
CONFIG = {**TINY["diffusion"], "batch_size": 16, "lr": 1e-3}


def _train(tmp: str, tag: str) -> Trainer:
    trainer = Trainer("diffusion", env="Pendulum-v1", config=CONFIG, demos=pendulum_demos(), seed=0,
                      device="cpu", log_dir=os.path.join(tmp, "run" if tag.startswith("rank") else f"run-{tag}"),
                      progress=False, preset=False)
    losses = record_losses(trainer)
    trainer.train(STEPS, evaluate=False)
    params = torch.cat([p.detach().flatten() for p in trainer.policy.parameters()])
    torch.save(params, os.path.join(tmp, f"params-{tag}.pt"))
    with open(os.path.join(tmp, f"losses-{tag}.json"), "w") as f:
        json.dump(losses, f)
    return trainer


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _train(tmp, f"rank{rank}")
    torch.distributed.destroy_process_group()


def test_two_cpu_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _train(str(tmp_path), "single")
    p0, p1 = (torch.load(tmp_path / f"params-rank{r}.pt") for r in (0, 1))
    ps = torch.load(tmp_path / "params-single.pt")
    assert torch.equal(p0, p1)  # DDP keeps the replicas identical
    torch.testing.assert_close(p0, ps, rtol=1e-4, atol=1e-5)  # == one process, global batch
    l0, l1, ls = (json.loads((tmp_path / f"losses-{t}.json").read_text()) for t in ("rank0", "rank1", "single"))
    assert len(ls) == STEPS and l0 != l1  # each rank trained on its own slice of the batch
    for a, b, s in zip(l0, l1, ls, strict=True):
        assert abs((a + b) / 2 - s) < 1e-5
    assert single.state.step == STEPS
