"""The time-series diffusion transformer of Diffusion Policy (DP-T).

Architecture, module names, parameter shapes and initialisation follow the original
``TransformerForDiffusion`` (Chi et al., ``diffusion_policy/model/diffusion/
transformer_for_diffusion.py``), so its ``state_dict`` loads into this module. With observation
conditioning (``cond_dim > 0``, the original's ``obs_as_cond``) and ``time_as_cond`` (the
defaults, and the paper's)::

    memory  = encoder(drop([time_emb(t); cond_obs_emb(o_1) ... cond_obs_emb(o_To)] + cond_pos_emb))
    x       = drop(input_emb(noisy_actions) + pos_emb)                         (B, H, n_emb)
    x       = decoder(x, memory)     n_layer pre-norm layers: causal self-attention over the
                                     action tokens, cross-attention to the memory, GELU MLP
    out     = head(ln_f(x))                                                    (B, H, D_act)

The encoder is an MLP (``Linear -> Mish -> Linear``, applied per token) when ``n_cond_layers``
is 0, else ``n_cond_layers`` pre-norm transformer encoder layers. With ``causal_attn`` action
token ``i`` attends to action tokens ``<= i`` and to memory tokens ``s <= i + 1`` (the time token
and observation steps ``<= i``), exactly the original's masks. With ``time_as_cond=False`` and no
observation conditioning, the original's encoder-only ("BERT") variant is built instead: the time
embedding is the first token of one ``n_layer``-layer encoder.

Our :class:`Denoiser` interface passes the observation features flat, ``global_cond (B, C)``,
concatenated per observation step (``ObservationEncoder`` flattens ``(B, T_o, D)``): the
transformer reshapes it to ``n_obs_steps`` tokens ``(B, T_o, C / T_o)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from rlox_dp.networks.base import Denoiser, _check_int
from rlox_dp.networks.embeddings import SinusoidalPosEmb

__all__ = ["TransformerForDiffusion"]


def _check_probability(name: str, value: object) -> float:
    """Return ``value`` as a float in ``[0, 1)``, else raise a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


def _additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean ``allowed`` -> ``torch.nn.Transformer``'s float mask: 0 where allowed, else -inf."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


class TransformerForDiffusion(Denoiser):
    """Diffusion Policy's time-series diffusion transformer (minGPT-style decoder; see module doc).

    Defaults are the paper's PushT low-dimensional configuration (8 layers, 4 heads, 256-dim
    embeddings, no embedding dropout, attention dropout 0.01, causal attention, time as a
    conditioning token, an MLP for the conditioning), about 9 M parameters.

    Args:
        action_dim: ``D_act`` (the original's ``input_dim`` = ``output_dim``).
        horizon: ``H``, action tokens.
        cond_dim: ``C``, size of the flat ``global_cond``: ``n_obs_steps`` observation tokens of
            ``C / n_obs_steps`` features each (``0``: unconditional).
        n_obs_steps: ``T_o``, observation tokens ``global_cond`` is split into.
        n_layer: decoder layers (encoder layers in the encoder-only variant).
        n_head: attention heads; ``n_emb`` must be divisible by it.
        n_emb: token embedding size (even, >= 4).
        p_drop_emb: dropout on the token embeddings.
        p_drop_attn: dropout inside the transformer layers (attention and MLP).
        causal_attn: causal self-attention over the action tokens and the original's memory mask.
        time_as_cond: the timestep is a memory token (True) or the first decoder-input token of
            the encoder-only variant (False; needs ``cond_dim == 0``, as in the original).
        n_cond_layers: transformer encoder layers over the memory; 0 uses the per-token MLP.

    Raises:
        ValueError: naming the argument when a value is out of range or inconsistent.
    """

    #: weight decay of parameters outside the transformer (an image encoder) in the original's
    #: hybrid transformer policy (``obs_encoder_weight_decay``).
    OBS_ENCODER_WEIGHT_DECAY: float = 1e-6

    mask: torch.Tensor | None
    memory_mask: torch.Tensor | None

    def __init__(
        self,
        action_dim: int,
        horizon: int,
        cond_dim: int,
        n_obs_steps: int = 1,
        n_layer: int = 8,
        n_head: int = 4,
        n_emb: int = 256,
        p_drop_emb: float = 0.0,
        p_drop_attn: float = 0.01,
        causal_attn: bool = True,
        time_as_cond: bool = True,
        n_cond_layers: int = 0,
    ) -> None:
        super().__init__(action_dim, horizon, cond_dim)
        _check_int("n_obs_steps", n_obs_steps, 1)
        _check_int("n_layer", n_layer, 1)
        _check_int("n_head", n_head, 1)
        _check_int("n_cond_layers", n_cond_layers, 0)
        if _check_int("n_emb", n_emb, 4) % 2 or n_emb % n_head:
            raise ValueError(
                f"n_emb must be even and divisible by n_head={n_head}, got n_emb={n_emb}"
            )
        if cond_dim % n_obs_steps:
            raise ValueError(
                f"cond_dim must be divisible by n_obs_steps (global_cond holds n_obs_steps "
                f"tokens of equal size), got cond_dim={cond_dim}, n_obs_steps={n_obs_steps}"
            )
        obs_as_cond = cond_dim > 0
        if obs_as_cond and not time_as_cond:
            raise ValueError(
                "time_as_cond must be True with observation conditioning (cond_dim > 0): the "
                "encoder-only variant (time_as_cond=False) takes no observations"
            )
        self.n_obs_steps = n_obs_steps
        self.n_emb = n_emb
        self.p_drop_emb = _check_probability("p_drop_emb", p_drop_emb)
        self.p_drop_attn = _check_probability("p_drop_attn", p_drop_attn)
        self.causal_attn = bool(causal_attn)
        self.time_as_cond = bool(time_as_cond)
        self.obs_as_cond = obs_as_cond
        n_tokens = horizon if time_as_cond else horizon + 1  # the original's T
        n_cond_tokens = (1 if time_as_cond else 0) + (n_obs_steps if obs_as_cond else 0)
        self.n_tokens, self.n_cond_tokens = n_tokens, n_cond_tokens
        self.encoder_only = n_cond_tokens == 0

        self.input_emb = nn.Linear(action_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, n_tokens, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim // n_obs_steps, n_emb) if obs_as_cond else None
        self.cond_pos_emb: nn.Parameter | None = None
        self.decoder: nn.TransformerDecoder | None = None

        def layer_kwargs() -> dict[str, Any]:
            return dict(d_model=n_emb, nhead=n_head, dim_feedforward=4 * n_emb,
                        dropout=p_drop_attn, activation="gelu", batch_first=True, norm_first=True)

        def encoder_stack(n: int) -> nn.TransformerEncoder:
            # enable_nested_tensor only applies to post-norm layers; off, it warns nothing
            return nn.TransformerEncoder(nn.TransformerEncoderLayer(**layer_kwargs()), n,
                                         enable_nested_tensor=False)

        self.encoder: nn.Module
        if self.encoder_only:
            self.encoder = encoder_stack(n_layer)
        else:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, n_cond_tokens, n_emb))
            if n_cond_layers > 0:
                self.encoder = encoder_stack(n_cond_layers)
            else:
                self.encoder = nn.Sequential(
                    nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb)
                )
            self.decoder = nn.TransformerDecoder(
                nn.TransformerDecoderLayer(**layer_kwargs()), num_layers=n_layer
            )

        # The original's masks, persistent buffers as there (so its state dicts load).
        mask = memory_mask = None
        if causal_attn:
            steps = torch.arange(n_tokens)
            mask = _additive_mask(steps[:, None] >= steps[None, :])  # (T, T)
            if time_as_cond and obs_as_cond:
                # memory token s is the time (s = 0) or observation step s - 1
                cond_steps = torch.arange(n_cond_tokens)
                memory_mask = _additive_mask(steps[:, None] >= cond_steps[None, :] - 1)
        self.register_buffer("mask", mask)
        self.register_buffer("memory_mask", memory_mask)

        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, action_dim)
        self._init_weights()
        self.register_load_state_dict_pre_hook(_drop_original_placeholder)

    def _init_weights(self) -> None:
        """The original's initialisation: N(0, 0.02) weights and position embeddings, zero
        biases, unit LayerNorms (its ``cond_pos_emb`` stays zero without observations)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):  # also the attention output projections
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.normal_(module.in_proj_weight, mean=0.0, std=0.02)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_emb, mean=0.0, std=0.02)
        if self.cond_obs_emb is not None:
            nn.init.normal_(self.cond_pos_emb, mean=0.0, std=0.02)

    # -- optimizer -----------------------------------------------------------------------------
    def no_weight_decay_names(self) -> set[str]:
        """Parameters the original never decays: biases, LayerNorm weights, position embeddings.

        Weights of ``Linear`` and ``MultiheadAttention`` layers are decayed (the original's
        ``get_optim_groups``); a parameter in neither set raises, as there.
        """
        decay: set[str] = set()
        no_decay = {"pos_emb"} | ({"cond_pos_emb"} if self.cond_pos_emb is not None else set())
        decayed_types, kept_types = (nn.Linear, nn.MultiheadAttention), (nn.LayerNorm, nn.Embedding)
        for module_name, module in self.named_modules():
            for name, _ in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if name.endswith("bias") or name.startswith("bias"):
                    no_decay.add(full)
                elif name.endswith("weight") and isinstance(module, decayed_types):
                    decay.add(full)
                elif name.endswith("weight") and isinstance(module, kept_types):
                    no_decay.add(full)
        names = {name for name, _ in self.named_parameters()}
        if decay & no_decay or names - (decay | no_decay):
            raise RuntimeError(
                f"parameters in both groups {sorted(decay & no_decay)} or in none "
                f"{sorted(names - decay - no_decay)}"
            )
        return no_decay

    def optim_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: ``[{decayed params, weight_decay}, {the rest, 0.0}]``,
        each in sorted name order, as the original's ``get_optim_groups``."""
        no_decay = self.no_weight_decay_names()
        params = dict(self.named_parameters())
        return [
            {"params": [params[n] for n in sorted(params) if n not in no_decay],
             "weight_decay": weight_decay},
            {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0},
        ]

    # -- forward -------------------------------------------------------------------------------
    def encode_condition(self, timesteps: torch.Tensor, global_cond: torch.Tensor) -> torch.Tensor:
        """The conditioning memory: ``(B,)`` timesteps, ``(B, C)`` -> ``(B, T_cond, n_emb)``.

        Tokens: the timestep embedding, then one per observation step.
        """
        tokens = self.time_emb(timesteps).unsqueeze(1)  # (B, 1, n_emb)
        if self.cond_obs_emb is not None:
            obs = global_cond.reshape(global_cond.shape[0], self.n_obs_steps, -1)  # (B, T_o, D)
            tokens = torch.cat((tokens, self.cond_obs_emb(obs)), dim=1)
        return self.encoder(self.drop(tokens + self.cond_pos_emb))

    def forward(
        self,
        noisy_actions: torch.Tensor,
        timesteps: torch.Tensor,
        global_cond: torch.Tensor,
        memory: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(B, H, D_act), (B,), (B, C) -> (B, H, D_act)``; see :meth:`Denoiser.forward`.

        ``memory``: optional precomputed ``encode_condition(timesteps, global_cond)``
        ``(B, T_cond, n_emb)``; the conditioning encoder is then skipped.
        """
        timesteps = self._check_inputs(noisy_actions, timesteps, global_cond)
        x = self.input_emb(noisy_actions)  # (B, H, n_emb)
        if self.encoder_only:
            x = torch.cat((self.time_emb(timesteps).unsqueeze(1), x), dim=1)
            x = self.encoder(self.drop(x + self.pos_emb), mask=self.mask,
                             is_causal=self.causal_attn)
            x = x[:, 1:]
        else:
            if memory is None:
                memory = self.encode_condition(timesteps, global_cond)
            expected = (noisy_actions.shape[0], self.n_cond_tokens, self.n_emb)
            if tuple(memory.shape) != expected:
                raise ValueError(
                    f"memory must have shape (B, T_cond, n_emb) = {expected}, "
                    f"got {tuple(memory.shape)}"
                )
            # tgt_is_causal: self.mask is exactly the causal mask (skips re-detecting it per call)
            x = self.decoder(self.drop(x + self.pos_emb), memory, tgt_mask=self.mask,
                             memory_mask=self.memory_mask, tgt_is_causal=self.causal_attn)
        return self.head(self.ln_f(x))

    def conditioned(
        self, global_cond: torch.Tensor, timesteps: Sequence[int]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A denoise function with the conditioning memory of all ``timesteps`` encoded once.

        The memory depends on the observation and the timestep only. With the MLP encoder
        (``n_cond_layers == 0``), which acts per token, the observation tokens are encoded once
        per chunk and the time token once per timestep; a transformer encoder mixes the tokens,
        so the memory of every (timestep, row) pair is encoded in one batched call. Per step only
        the decoder runs. Exact in eval mode; in training mode with dropout (and for the
        encoder-only variant, which has no memory) this is plain :meth:`forward` per call.
        Calling it at a timestep not in ``timesteps`` raises an ``IndexError``.

        Args:
            global_cond: ``(B, C)`` conditioning.
            timesteps: distinct non-negative integer timesteps.

        Returns:
            ``(noisy_actions (B, H, D_act), t (B,)) -> (B, H, D_act)``.
        """
        steps = [int(t) for t in timesteps]
        if not steps or min(steps) < 0 or len(set(steps)) != len(steps):
            raise ValueError(f"timesteps must be distinct non-negative ints, got {steps}")
        dropout = self.p_drop_emb > 0 or self.p_drop_attn > 0
        if self.encoder_only or (self.training and dropout):
            return super().conditioned(global_cond, steps)
        batch, device = global_cond.shape[0], global_cond.device
        step_tensor = torch.tensor(steps, device=device)
        row_of = torch.full((max(steps) + 1,), len(steps), dtype=torch.long)  # unknown -> S
        row_of[steps] = torch.arange(len(steps))
        row_of = row_of.to(device)
        batch_rows = torch.arange(batch, device=device)
        if isinstance(self.encoder, nn.Sequential):  # per-token MLP: time and obs apart
            pos = self.cond_pos_emb[0]  # (T_cond, n_emb)
            time_memory = self.encoder(self.time_emb(step_tensor) + pos[0])  # (S, n_emb)
            obs_memory = None
            if self.cond_obs_emb is not None:
                obs = global_cond.reshape(batch, self.n_obs_steps, -1)
                obs_memory = self.encoder(self.cond_obs_emb(obs) + pos[1:])  # (B, T_o, n_emb)

            def memory_at(t: torch.Tensor) -> torch.Tensor:
                time_token = time_memory[row_of[t]].unsqueeze(1)  # (B, 1, n_emb)
                if obs_memory is None:
                    return time_token
                return torch.cat((time_token, obs_memory), dim=1)
        else:
            n = len(steps)
            table = self.encode_condition(
                step_tensor.repeat_interleave(batch), global_cond.repeat(n, 1)
            ).unflatten(0, (n, batch))  # (S, B, T_cond, n_emb)

            def memory_at(t: torch.Tensor) -> torch.Tensor:
                return table[row_of[t], batch_rows]

        def denoise(noisy_actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            """``(B, H, D_act), (B,) -> (B, H, D_act)``."""
            t = t.expand(batch) if t.ndim == 0 else t
            return self(noisy_actions, t, global_cond, memory=memory_at(t))

        return denoise


def _drop_original_placeholder(module: nn.Module, state_dict: dict[str, Any], prefix: str,
                               *args: Any) -> None:
    """Load hook: drop the original's ``_dummy_variable``, an empty parameter its
    ``ModuleAttrMixin`` base class adds to every state dict (it holds no values)."""
    key = prefix + "_dummy_variable"
    if key in state_dict and state_dict[key].numel() == 0:
        del state_dict[key]
