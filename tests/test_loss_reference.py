"""Behaviour pin: the same seed gives the same training losses as a stored reference.

Refactors of the training loop, the configs or the registries must not move a number. The
reference (``tests/data/loss_reference.json``) holds, per algorithm, the per-step training losses
of a tiny run and the sum of the trained weights. Regenerate it only for a deliberate change of
behaviour, and say so in the commit:

    python tests/test_loss_reference.py --write
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, pendulum_demos, record_losses

from rlox_dp import Trainer

REFERENCE = Path(__file__).resolve().parent / "data" / "loss_reference.json"
#: tiny runs, one per algorithm and denoiser, each a few seconds on one thread.
RUNS = {
    "diffusion_unet": ("diffusion", TINY["diffusion"]),
    "diffusion_mlp": ("diffusion", {**TINY["diffusion"], "denoiser": "mlp", "hidden_dim": 32,
                                    "n_layers": 2}),
    "diffusion_sample_ddim": ("diffusion", {**TINY["diffusion"], "prediction_type": "sample",
                                            "noise_scheduler_type": "DDIM"}),
    "bc": ("bc", TINY["bc"]),
    "bc_chunk": ("bc_chunk", TINY["bc_chunk"]),
}
STEPS = 12


def run(name: str, log_dir: Path) -> dict[str, object]:
    """Train run ``name`` for :data:`STEPS` steps; its per-step losses and weight sums."""
    algorithm, config = RUNS[name]
    torch.set_num_threads(1)
    trainer = Trainer(algorithm, env="Pendulum-v1", config=config, demos=pendulum_demos(), seed=3,
                      device="cpu", log_dir=log_dir, progress=False, preset=False)
    losses = record_losses(trainer)
    trainer.train(STEPS, evaluate=False)
    with torch.no_grad():
        weights = float(sum(p.double().sum() for p in trainer.policy.parameters()))
        ema = float(sum(p.double().sum() for p in trainer.eval_policy.parameters()))
    return {"losses": losses, "weight_sum": weights, "ema_weight_sum": ema}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_losses_equal_the_stored_reference(name, tmp_path):
    reference = json.loads(REFERENCE.read_text())[name]
    got = run(name, tmp_path / name)
    # Float32 kernels may round differently on another CPU: tight relative tolerances, far
    # below any change of behaviour (a different batch, noise draw or schedule moves the
    # losses by percent).
    assert got["losses"] == pytest.approx(reference["losses"], rel=1e-4, abs=1e-6)
    assert got["weight_sum"] == pytest.approx(reference["weight_sum"], rel=1e-5, abs=1e-5)
    assert got["ema_weight_sum"] == pytest.approx(reference["ema_weight_sum"], rel=1e-5, abs=1e-5)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        raise SystemExit("usage: python tests/test_loss_reference.py --write")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        table = {name: run(name, Path(tmp) / name) for name in sorted(RUNS)}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
