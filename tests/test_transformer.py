"""DP-T, the time-series diffusion transformer: the original's structure, masks, fast path, training."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from helpers import (
    TINY,
    assert_conditioned_matches_forward,
    build,
    free_port,
    pendulum_demos,
    record_losses,
)

from rlox_dp import Trainer
from rlox_dp.diffusion import SAMPLERS
from rlox_dp.networks import TransformerForDiffusion, build_denoiser

#: tiny transformer settings (seconds on one thread)
TINY_T = {"n_layer": 2, "n_head": 2, "n_emb": 16}
#: the tiny diffusion policy with the transformer (TINY's U-Net fields are ignored)
TINY_POLICY = {"denoiser": "transformer", **TINY_T}


def _inputs(batch: int, horizon: int, action_dim: int, cond_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, horizon, action_dim, generator=g),
            torch.randint(0, 100, (batch,), generator=g),
            torch.randn(batch, cond_dim, generator=g))


def _lively(net: TransformerForDiffusion) -> TransformerForDiffusion:
    """Larger random weights than the original's N(0, 0.02), so every input visibly matters."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


VARIANTS = {
    "mlp_memory": {},
    "encoder_memory": {"n_cond_layers": 2},
    "not_causal": {"causal_attn": False},
    "dropout": {"p_drop_emb": 0.1, "p_drop_attn": 0.1},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_shapes(variant):
    torch.manual_seed(0)
    net = TransformerForDiffusion(3, 8, 10, n_obs_steps=2, **TINY_T, **VARIANTS[variant])
    x, t, c = _inputs(4, 8, 3, 10)
    assert net(x, t, c).shape == (4, 8, 3)
    assert net(x, torch.tensor(7), c).shape == (4, 8, 3)  # a 0-d timestep is broadcast
    assert net.encode_condition(t, c).shape == (4, 3, 16)  # time token + 2 observation tokens


def test_unconditional_and_encoder_only_variants():
    """cond_dim 0: time is the only memory token, or (time_as_cond=False) the first input token
    of the original's encoder-only variant, whose position table has H + 1 rows."""
    x, t, _ = _inputs(2, 8, 3, 0)
    empty = torch.zeros(2, 0)
    decoder = TransformerForDiffusion(3, 8, 0, **TINY_T)
    assert decoder.n_cond_tokens == 1 and decoder.memory_mask is None
    assert decoder(x, t, empty).shape == (2, 8, 3)
    bert = TransformerForDiffusion(3, 8, 0, time_as_cond=False, **TINY_T)
    assert bert.encoder_only and bert.decoder is None and bert.pos_emb.shape == (1, 9, 16)
    assert bert.mask.shape == (9, 9)
    assert bert(x, t, empty).shape == (2, 8, 3)
    assert bert.eval().conditioned(empty, [5])(x, torch.full((2,), 5)).shape == (2, 8, 3)


def test_global_cond_is_split_into_observation_tokens():
    """global_cond (B, T_o * D) is the observation encoder's step-major flattening of (B, T_o, D):
    token k is cond_obs_emb of features [k D, (k + 1) D)."""
    torch.manual_seed(0)
    net = TransformerForDiffusion(2, 4, 6, n_obs_steps=3, **TINY_T).eval()
    _, t, c = _inputs(2, 4, 2, 6)
    time_token = net.time_emb(t)
    tokens = torch.stack([time_token, *(net.cond_obs_emb(c[:, 2 * k: 2 * k + 2]) for k in range(3))], 1)
    expected = net.encoder(tokens + net.cond_pos_emb)
    torch.testing.assert_close(net.encode_condition(t, c), expected)


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ValueError, match="n_obs_steps"):
        TransformerForDiffusion(2, 8, 7, n_obs_steps=2, **TINY_T)
    with pytest.raises(ValueError, match="n_emb"):
        TransformerForDiffusion(2, 8, 4, n_layer=1, n_head=3, n_emb=16)
    with pytest.raises(ValueError, match="time_as_cond"):
        TransformerForDiffusion(2, 8, 4, time_as_cond=False, **TINY_T)
    with pytest.raises(ValueError, match="p_drop_attn"):
        TransformerForDiffusion(2, 8, 4, p_drop_attn=1.0, **TINY_T)
    with pytest.raises(ValueError, match="n_cond_layers"):
        TransformerForDiffusion(2, 8, 4, n_cond_layers=-1, **TINY_T)
    net = TransformerForDiffusion(2, 8, 4, n_obs_steps=2, **TINY_T)
    x, t, c = _inputs(2, 8, 2, 4)
    with pytest.raises(ValueError, match="global_cond"):
        net(x, t, c[:, :3])
    with pytest.raises(ValueError, match="memory"):
        net(x, t, c, memory=torch.zeros(2, 2, 16))


# -- the original's structure ----------------------------------------------------------------------
def _original_shapes(d_act: int, horizon: int, n_obs: int, d_obs: int, n_layer: int, n_emb: int,
                     n_cond_layers: int = 0) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the original ``TransformerForDiffusion`` (obs_as_cond,
    time_as_cond, its state dict minus buffers), written out from its source."""
    e = n_emb

    def attention(prefix: str) -> dict[str, tuple[int, ...]]:
        return {f"{prefix}.in_proj_weight": (3 * e, e), f"{prefix}.in_proj_bias": (3 * e,),
                f"{prefix}.out_proj.weight": (e, e), f"{prefix}.out_proj.bias": (e,)}

    def layer(prefix: str, n_norms: int, cross: bool) -> dict[str, tuple[int, ...]]:
        shapes = {**attention(f"{prefix}.self_attn"),
                  **(attention(f"{prefix}.multihead_attn") if cross else {}),
                  f"{prefix}.linear1.weight": (4 * e, e), f"{prefix}.linear1.bias": (4 * e,),
                  f"{prefix}.linear2.weight": (e, 4 * e), f"{prefix}.linear2.bias": (e,)}
        for k in range(1, n_norms + 1):
            shapes.update({f"{prefix}.norm{k}.weight": (e,), f"{prefix}.norm{k}.bias": (e,)})
        return shapes

    shapes = {"pos_emb": (1, horizon, e), "cond_pos_emb": (1, 1 + n_obs, e),
              "input_emb.weight": (e, d_act), "input_emb.bias": (e,),
              "cond_obs_emb.weight": (e, d_obs), "cond_obs_emb.bias": (e,),
              "ln_f.weight": (e,), "ln_f.bias": (e,), "head.weight": (d_act, e), "head.bias": (d_act,)}
    if n_cond_layers:
        for i in range(n_cond_layers):
            shapes.update(layer(f"encoder.layers.{i}", 2, cross=False))
    else:
        shapes.update({"encoder.0.weight": (4 * e, e), "encoder.0.bias": (4 * e,),
                       "encoder.2.weight": (e, 4 * e), "encoder.2.bias": (e,)})
    for i in range(n_layer):
        shapes.update(layer(f"decoder.layers.{i}", 3, cross=True))
    return shapes


def test_parameters_equal_the_originals_for_the_paper_pusht_config():
    """The paper's PushT low-dim DP-T: D_act 2, H 16, T_o 2 steps of 20 features, 8 layers,
    4 heads, 256-dim embeddings. Names, shapes and per-module counts equal the original's."""
    net = TransformerForDiffusion(2, 16, 40, n_obs_steps=2, n_layer=8, n_head=4, n_emb=256)
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == _original_shapes(2, 16, 2, 20, 8, 256)
    e, d_act, d_obs = 256, 2, 20
    attention = 3 * e * e + 3 * e + e * e + e
    mlp = 4 * e * e + 4 * e + 4 * e * e + e  # Linear(e, 4e) and Linear(4e, e)
    expected = {
        "input_emb": d_act * e + e, "pos_emb": 16 * e, "cond_obs_emb": d_obs * e + e,
        "cond_pos_emb": 3 * e, "encoder": mlp,
        "decoder": 8 * (2 * attention + mlp + 3 * 2 * e),  # self- and cross-attention, 3 norms
        "ln_f": 2 * e, "head": e * d_act + d_act,
    }
    counts: dict[str, int] = {}
    for name, p in net.named_parameters():
        counts[name.split(".")[0]] = counts.get(name.split(".")[0], 0) + p.numel()
    assert counts == expected
    assert sum(expected.values()) == 8_965_122  # by hand: the "9 M" DP-T of the paper's PushT


def test_encoder_layers_equal_the_originals():
    net = TransformerForDiffusion(2, 8, 6, n_obs_steps=3, n_cond_layers=2, **TINY_T)
    shapes = {name: tuple(p.shape) for name, p in net.named_parameters()}
    assert shapes == _original_shapes(2, 8, 3, 2, 2, 16, n_cond_layers=2)


def test_original_state_dict_loads_strictly():
    """A state dict with the original's keys (parameters, its mask buffers and the empty
    ``_dummy_variable`` of its ModuleAttrMixin) loads with strict=True."""
    net = TransformerForDiffusion(2, 8, 6, n_obs_steps=3, **TINY_T)
    shapes = _original_shapes(2, 8, 3, 2, 2, 16)
    g = torch.Generator().manual_seed(0)
    state = {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}
    t, s = torch.meshgrid(torch.arange(8), torch.arange(4), indexing="ij")
    causal = (torch.triu(torch.ones(8, 8)) == 1).transpose(0, 1)  # the original's construction
    state["mask"] = causal.float().masked_fill(~causal, float("-inf")).masked_fill(causal, 0.0)
    memory = t >= (s - 1)
    state["memory_mask"] = memory.float().masked_fill(~memory, float("-inf")).masked_fill(memory, 0.0)
    state["_dummy_variable"] = torch.empty(0)
    net.load_state_dict(state, strict=True)
    torch.testing.assert_close(net.head.weight, state["head.weight"])
    assert torch.equal(net.mask, state["mask"]) and torch.equal(net.memory_mask, state["memory_mask"])


def test_initialisation_is_the_originals():
    torch.manual_seed(0)
    net = TransformerForDiffusion(2, 16, 40, n_obs_steps=2, n_layer=2, n_head=4, n_emb=256)
    layer = net.decoder.layers[0]
    for w in (net.input_emb.weight, layer.self_attn.in_proj_weight, layer.linear1.weight, net.pos_emb):
        assert abs(w.std().item() - 0.02) < 0.003
    assert torch.all(layer.self_attn.in_proj_bias == 0) and torch.all(layer.linear2.bias == 0)
    assert torch.all(layer.norm1.weight == 1) and torch.all(net.ln_f.bias == 0)


# -- masks -------------------------------------------------------------------------------------------
def test_causal_action_token_never_sees_later_actions():
    """Perturbing action token j changes the outputs at j and after, never before."""
    torch.manual_seed(0)
    causal = _lively(TransformerForDiffusion(2, 8, 4, n_obs_steps=2, **TINY_T))
    full = TransformerForDiffusion(2, 8, 4, n_obs_steps=2, causal_attn=False, **TINY_T).eval()
    full.load_state_dict(causal.state_dict(), strict=False)  # same weights, no masks
    x, t, c = _inputs(3, 8, 2, 4)
    with torch.no_grad():
        for j in (1, 4, 7):
            x2 = x.clone()
            x2[:, j] += 3.0
            a, b = causal(x, t, c), causal(x2, t, c)
            torch.testing.assert_close(a[:, :j], b[:, :j], rtol=0, atol=1e-6)
            assert (a[:, j:] - b[:, j:]).abs().amax(dim=(0, 2)).min() > 1e-3
            a, b = full(x, t, c), full(x2, t, c)
            assert (a[:, :j] - b[:, :j]).abs().max() > 1e-3  # without the mask they would change


def test_memory_mask_hides_later_observation_steps():
    """Action token i sees the time token and observation steps <= i (the original's mask):
    token 0 ignores the second observation step, the later tokens use it."""
    torch.manual_seed(0)
    net = _lively(TransformerForDiffusion(2, 8, 4, n_obs_steps=2, **TINY_T))
    x, t, c = _inputs(3, 8, 2, 4)
    c2 = c.clone()
    c2[:, 2:] += 3.0  # the second observation step
    with torch.no_grad():
        a, b = net(x, t, c), net(x, t, c2)
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=0, atol=1e-6)
    assert (a[:, 1:] - b[:, 1:]).abs().amax(dim=(0, 2)).min() > 1e-3


# -- conditioning fast path -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["mlp_memory", "encoder_memory", "not_causal", "dropout"])
def test_conditioned_matches_forward(variant):
    """The memory encoded once per chunk gives forward's output at every planned timestep."""
    torch.manual_seed(0)
    net = TransformerForDiffusion(2, 8, 4, n_obs_steps=2, **TINY_T, **VARIANTS[variant]).eval()
    x, _, c = _inputs(4, 8, 2, 4)
    steps = [99, 66, 33, 0]
    assert_conditioned_matches_forward(net.conditioned(c, steps), lambda x, t: net(x, t, c), x, steps, 50)
    with pytest.raises(ValueError, match="timesteps"):
        net.conditioned(c, [5, 5])


def test_conditioned_in_training_mode_with_dropout_is_forward():
    """With dropout active the fast path would share one dropout draw over the steps: plain path."""
    net = TransformerForDiffusion(2, 8, 4, n_obs_steps=2, **TINY_T, **VARIANTS["dropout"]).train()
    x, t, c = _inputs(4, 8, 2, 4)
    denoise = net.conditioned(c, t.tolist())
    torch.manual_seed(1)
    a = denoise(x, t)
    torch.manual_seed(1)
    torch.testing.assert_close(a, net(x, t, c))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_fast_path_equals_plain_path(sampler):
    """sample_chunk (conditioned memory) == the sampler over plain forward calls, same noise."""
    policy, _ = build("diffusion", **TINY_POLICY, num_train_timesteps=20)
    policy.eval()
    policy.configure_inference(sampler.upper(), 5)
    obs = {"state": torch.randn(3, 2, 3)}
    with torch.no_grad():
        fast = policy.sample_chunk(obs, torch.Generator().manual_seed(0))
        cond = policy.obs_encoder(obs)
        plain = policy.sampler.sample(lambda x, t: policy.denoiser(x, t, cond), fast.shape, 5,
                                      generator=torch.Generator().manual_seed(0))
        actions = policy.predict_action_chunk(obs, torch.Generator().manual_seed(0))
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    assert actions.shape == (3, policy.config.n_action_steps, 1) and torch.isfinite(actions).all()


# -- optimizer ---------------------------------------------------------------------------------------
def test_optimizer_groups_decay_only_linear_and_attention_weights():
    net = TransformerForDiffusion(2, 8, 6, n_obs_steps=3, n_cond_layers=1, **TINY_T)
    decay, no_decay = net.optim_groups(0.1)
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    names = {id(p): n for n, p in net.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decayed | kept == set(names.values()) and not decayed & kept
    for name in decayed:
        assert name.endswith(("in_proj_weight", "out_proj.weight", "linear1.weight",
                              "linear2.weight", "emb.weight", "head.weight"))
    assert {"input_emb.weight", "cond_obs_emb.weight", "head.weight",
            "decoder.layers.1.multihead_attn.in_proj_weight",
            "encoder.layers.0.self_attn.out_proj.weight"} <= decayed
    assert {"pos_emb", "cond_pos_emb", "ln_f.weight", "decoder.layers.0.norm3.weight",
            "encoder.layers.0.norm1.weight"} <= kept
    for name in kept - {"pos_emb", "cond_pos_emb"}:
        assert name.endswith("bias") or "norm" in name or name.startswith("ln_f")


def _trainer(tmp_path, seed: int = 0, **overrides) -> Trainer:
    config = {**TINY["diffusion"], **TINY_POLICY, **overrides}
    return Trainer("diffusion", env="Pendulum-v1", config=config, demos=pendulum_demos(), seed=seed,
                   device="cpu", log_dir=tmp_path / f"run-{seed}", progress=False, preset=False)


def test_trainer_uses_the_originals_optimizer_unless_overridden(tmp_path):
    trainer = _trainer(tmp_path, lr_warmup_steps=None)
    decay, no_decay = trainer.optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    assert decay["betas"] == (0.9, 0.95) and decay["lr"] == 1e-4
    assert trainer.training.lr_warmup_steps == 1000 and trainer.training.lr_scheduler == "cosine"
    n_params = sum(p.numel() for p in trainer.policy.parameters())
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == n_params
    own = _trainer(tmp_path, seed=1, adam_betas=(0.8, 0.9), weight_decay=0.01, lr_warmup_steps=7)
    assert own.optimizer.param_groups[0]["betas"] == (0.8, 0.9)
    assert own.optimizer.param_groups[0]["weight_decay"] == 0.01 and own.training.lr_warmup_steps == 7
    unet = Trainer("diffusion", env="Pendulum-v1", config=TINY["diffusion"], demos=pendulum_demos(),
                   device="cpu", log_dir=tmp_path / "unet", progress=False, preset=False)
    (group,) = unet.optimizer.param_groups  # the U-Net keeps one group and its own defaults
    assert group["weight_decay"] == 1e-6 and group["betas"] == (0.95, 0.999)


# -- training, checkpoints -------------------------------------------------------------------------
def test_training_reduces_the_loss_and_checkpoint_round_trips(tmp_path):
    trainer = _trainer(tmp_path, lr=1e-3, lr_warmup_steps=5, batch_size=64)
    losses = record_losses(trainer)
    trainer.train(60, evaluate=False)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    path = trainer.save(tmp_path / "ckpt.safetensors")
    loaded = Trainer.load(path, demos=pendulum_demos(), device="cpu", progress=False)
    assert isinstance(loaded.policy.denoiser, TransformerForDiffusion)
    assert len(loaded.optimizer.param_groups) == 2
    obs = {"state": np.random.default_rng(0).normal(size=(3, 2, 3)).astype(np.float32)}
    a = trainer.eval_policy.eval().predict_action_chunk(obs, torch.Generator().manual_seed(7))
    b = loaded.eval_policy.eval().predict_action_chunk(obs, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    loaded.train(62, evaluate=False)  # resumes with the two groups' optimizer state


@pytest.mark.slow  # three compiled graphs: ~40 s on one thread
@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler")
def test_compiled_networks_match_eager():
    """compile_networks: the compiled few-step loop (conditioned memory inside the graph), the
    compiled per-step denoiser of a long loop, and the compiled training loss equal eager
    (no dropout, whose random draws differ between eager and compiled code)."""
    config = {**TINY_POLICY, "p_drop_attn": 0.0, "num_train_timesteps": 20}
    (eager, buffer), (compiled, _) = build("diffusion", **config), build("diffusion", **config)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_networks(dynamic=False)
    obs = {"state": torch.randn(1, 2, 3)}

    def chunk(policy, sampler: str, steps: int) -> torch.Tensor:
        policy.eval().configure_inference(sampler, steps)
        with torch.no_grad():
            return policy.predict_action_chunk(obs, torch.Generator().manual_seed(3))

    for sampler, steps, whole_loop in (("DDIM", 3, True), ("DDPM", 20, False)):
        torch.testing.assert_close(chunk(eager, sampler, steps), chunk(compiled, sampler, steps),
                                   rtol=1e-4, atol=1e-4)
        assert (steps in {len(plan) for plan in compiled.acceleration._loops}) == whole_loop
    batch = buffer.sample(8, generator=torch.Generator().manual_seed(1))
    la, lb = (p.train().compute_loss(batch, torch.Generator().manual_seed(2))[0]
              for p in (eager, compiled))
    torch.testing.assert_close(la, lb, rtol=1e-4, atol=1e-5)


def _ddp_train(tmp: str, tag: str) -> None:
    # no dropout: its masks come from each process's own RNG, not from the global batch
    trainer = _trainer(Path(tmp) / tag, p_drop_attn=0.0, batch_size=16, lr=1e-3, lr_warmup_steps=2)
    trainer.train(3, evaluate=False)
    torch.save(torch.cat([p.detach().flatten() for p in trainer.policy.parameters()]),
               Path(tmp) / f"params-{tag}.pt")


def _ddp_worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _ddp_train(tmp, f"rank{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes: ~20-40 s
def test_two_ddp_processes_match_one_process(tmp_path):
    """DDP (gloo, 2 CPU processes) with the transformer's two parameter groups: the same steps
    as one process with the global batch."""
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    _ddp_train(str(tmp_path), "single")
    p0, p1, ps = (torch.load(tmp_path / f"params-{t}.pt") for t in ("rank0", "rank1", "single"))
    assert torch.equal(p0, p1)
    torch.testing.assert_close(p0, ps, rtol=1e-4, atol=1e-5)


def test_build_denoiser_registers_the_transformer():
    net = build_denoiser("transformer", action_dim=2, horizon=8, cond_dim=4, n_obs_steps=2, **TINY_T)
    assert isinstance(net, TransformerForDiffusion)
    with pytest.raises(TypeError, match="n_layers"):
        build_denoiser("transformer", action_dim=2, horizon=8, cond_dim=4, n_layers=2)
