"""Inference fast paths of the diffusion-family policies, kept apart from the reference code.

``accelerate(policy)`` switches them on for a :class:`~rlox_dp.algorithms.DiffusionPolicy` (and
its subclasses: flow matching, consistency); ``DiffusionPolicy.compile_networks()`` calls it
with the compile options, which adds the compiled denoising loop. Every path gives the plain
path's outputs up to float rounding (``tests/test_acceleration.py``); none changes parameters,
state-dict keys or training (they act on inference only: batch 1 without autograd, or sampling).

* :class:`GemmConv1d`: the U-Net's convolutions at batch 1 without autograd on the CPU run as one
  matrix product (``im2col @ weight^T``) instead of torch's ``1 x K`` Conv2d, which is slow when
  the time axis is short (4-8 steps in the deep U-Net levels). Whether that is faster depends on
  the CPU and the torch build, so it is decided per machine: a quick timing of both on the
  network's own shapes at first use (a few ms, cached per process), overridden by the
  ``gemm_conv`` argument of :func:`accelerate` or the ``RLOX_DP_GEMM_CONV`` environment variable.
* FiLM table (:func:`film_conditioned`): every residual block's FiLM parameters
  ``Linear(Mish(cat(step_features(t), global_cond)))`` for all of a chunk's timesteps, computed
  once per chunk; each step then looks its rows up instead of running the timestep encoder and
  one ``Linear`` per block.
* Compiled denoising loop: after ``compile_networks()``, a sampler with at most
  :attr:`Acceleration.max_compiled_loop_steps` steps runs its whole loop (the FiLM table
  included) as one ``torch.compile`` graph: one guard check and one graph call per chunk.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rlox_dp.diffusion.plan import DenoiseFn, SamplingPlan
from rlox_dp.networks.unet1d import ConditionalResidualBlock1D, ConditionalUnet1D

__all__ = [
    "GEMM_CONV_ENV",
    "Acceleration",
    "GemmConv1d",
    "accelerate",
    "film_conditioned",
    "film_table",
    "choose_convolutions",
    "gemm_conv_is_faster",
]

#: environment variable overriding the per-machine choice of :class:`GemmConv1d`: ``"1"`` use it
#: wherever it applies, ``"0"`` never, ``"auto"`` (or unset) time it (:func:`gemm_conv_is_faster`).
GEMM_CONV_ENV = "RLOX_DP_GEMM_CONV"


class GemmConv1d(nn.Conv1d):
    """``nn.Conv1d`` whose single-sample CPU inference runs as one matrix product.

    For one sample (batch 1, no autograd) torch runs a small ``Conv1d`` as a ``1 x K`` Conv2d in
    ``_slow_conv2d_forward``, whose ``(C_out, C_in K) @ (C_in K, T)`` product is slow when ``T``
    is short. The same convolution as ``im2col (T, C_in K) @ weight (C_out, C_in K)^T`` is used
    when ``C_in * C_out >= min_channel_product`` and ``K > 1``; every other case (batches,
    autograd, GPUs, small convolutions, stride / dilation / groups) is ``nn.Conv1d.forward``.
    Parameters and state-dict keys are those of ``nn.Conv1d``; :func:`accelerate` turns a
    model's ``nn.Conv1d`` modules into this class in place where it is faster.
    """

    min_channel_product: int = 64 * 128

    def _use_gemm(self, x: torch.Tensor) -> bool:
        return (
            x.shape[0] == 1
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and _gemm_applies(self)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, T) -> (B, C_out, T_out)``, ``T_out = T + 2 padding - K + 1``."""
        if not self._use_gemm(x):
            return super().forward(x)
        return _gemm_conv1d(self, x)


def _gemm_applies(conv: nn.Conv1d) -> bool:
    """Whether :class:`GemmConv1d`'s product can stand for ``conv`` (shape and options)."""
    return (
        conv.kernel_size[0] > 1
        and conv.in_channels * conv.out_channels >= GemmConv1d.min_channel_product
        and conv.stride == (1,)
        and conv.dilation == (1,)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
    )


def _gemm_conv1d(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for one sample ``(1, C_in, T)`` as ``im2col @ weight^T`` -> ``(1, C_out, T_out)``."""
    k, p = conv.kernel_size[0], conv.padding[0]
    padded = F.pad(x[0], (p, p))  # (C_in, T + 2p)
    cols = padded.unfold(1, k, 1).transpose(0, 1).reshape(-1, conv.in_channels * k)
    out = F.linear(cols, conv.weight.reshape(conv.out_channels, -1), conv.bias)  # (T_out, C_out)
    return out.T.unsqueeze(0)


#: decisions of :func:`gemm_conv_is_faster` in this process, keyed by machine and shape.
_GEMM_DECISIONS: dict[tuple[object, ...], bool] = {}


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _alternating_medians(first: Callable[[], object], second: Callable[[], object],
                         rounds: int) -> tuple[float, float]:
    """Median seconds of ``first`` and of ``second`` over ``rounds`` alternating calls of each
    (after one warm-up call each), so that a neighbour's load hits both alike."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for call, out in zip((first, second), times, strict=True):
            start = time.perf_counter()
            call()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def gemm_conv_is_faster(conv: nn.Conv1d, length: int, rounds: int = 15) -> bool:
    """Whether :class:`GemmConv1d`'s product beats ``nn.Conv1d`` on this machine for ``conv`` at
    batch 1 over ``length`` time steps: medians of ``rounds`` alternating runs of both (a few ms),
    decided once per process for each CPU model, torch version, thread count, shape and dtype."""
    key = (_cpu_model(), torch.__version__, torch.get_num_threads(), conv.in_channels,
           conv.out_channels, conv.kernel_size, conv.padding, length, conv.weight.dtype)
    if key not in _GEMM_DECISIONS:
        x = torch.randn(1, conv.in_channels, length, dtype=conv.weight.dtype,
                        generator=torch.Generator().manual_seed(0))  # global RNG untouched
        with torch.no_grad():
            plain, gemm = _alternating_medians(
                lambda: nn.Conv1d.forward(conv, x), lambda: _gemm_conv1d(conv, x), rounds
            )
        _GEMM_DECISIONS[key] = gemm < plain
    return _GEMM_DECISIONS[key]


def _input_lengths(denoiser: nn.Module, convs: list[nn.Conv1d]) -> dict[nn.Conv1d, int]:
    """The time length each of ``convs`` sees in one batch-1 forward of ``denoiser``."""
    lengths: dict[nn.Conv1d, int] = {}

    def record(conv: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        lengths.setdefault(conv, args[0].shape[-1])

    hooks = [conv.register_forward_pre_hook(record) for conv in convs]
    try:
        with torch.no_grad():
            denoiser(torch.zeros(1, denoiser.horizon, denoiser.action_dim),
                     torch.zeros(1, dtype=torch.long), torch.zeros(1, denoiser.cond_dim))
    finally:
        for hook in hooks:
            hook.remove()
    return lengths


def _gemm_setting(gemm_conv: bool | str | None) -> bool | str:
    """``gemm_conv`` (argument) or the environment's :data:`GEMM_CONV_ENV`: True, False or "auto"."""
    if gemm_conv is None:
        gemm_conv = os.environ.get(GEMM_CONV_ENV, "auto")
    if isinstance(gemm_conv, bool):
        return gemm_conv
    value = str(gemm_conv).strip().lower()
    choices = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False,
               "auto": "auto", "": "auto"}
    if value not in choices:
        raise ValueError(f"gemm_conv / ${GEMM_CONV_ENV} must be 1, 0 or auto; got {gemm_conv!r}")
    return choices[value]


def _film_channels(block: ConditionalResidualBlock1D) -> int:
    """Size of a block's FiLM parameters: ``2 C_out`` (scale and bias) or ``C_out``."""
    return block.cond_encoder[1].out_features


def film_table(
    unet: ConditionalUnet1D, timesteps: torch.Tensor, global_cond: torch.Tensor
) -> torch.Tensor:
    """FiLM parameters of every residual block for every pair of timestep and conditioning row.

    Each block's ``Linear(Mish(cat(step_features(t), global_cond)))`` splits into a part of
    ``t`` and a part of ``global_cond``; this runs the timestep encoder once for all ``S``
    timesteps and, per block, one product for each part over all rows (the weights are read
    in place, not concatenated).

    Args:
        unet: the network.
        timesteps: ``(S,)`` timesteps.
        global_cond: ``(B, C)`` conditioning.

    Returns:
        ``(S, B, F)``; ``[s, b]`` holds what ``unet.forward`` computes for ``timesteps[s]`` and
        ``global_cond[b]``, blocks concatenated in ``unet.film_blocks`` order.
    """
    d_t = unet.diffusion_step_embed_dim
    step_features = F.mish(unet.diffusion_step_encoder(timesteps))  # (S, D_t)
    cond_features = F.mish(global_cond)  # (B, C)
    parts = []
    for block in unet.film_blocks:
        linear = block.cond_encoder[1]
        step = F.linear(step_features, linear.weight[:, :d_t], linear.bias)  # (S, F_block)
        obs = F.linear(cond_features, linear.weight[:, d_t:])  # (B, F_block)
        parts.append(step.unsqueeze(1) + obs.unsqueeze(0))
    return torch.cat(parts, dim=-1)


def film_conditioned(
    unet: ConditionalUnet1D, global_cond: torch.Tensor, timesteps: Sequence[int]
) -> DenoiseFn:
    """``unet.conditioned(global_cond, timesteps)`` with the FiLM parameters precomputed.

    Per call it only looks up its rows of :func:`film_table` (two indexing ops). Calling it at a
    timestep not in ``timesteps`` raises an ``IndexError``.

    Args:
        unet: the network.
        global_cond: ``(B, C)`` conditioning.
        timesteps: distinct non-negative integer timesteps.

    Returns:
        ``(noisy_actions (B, H, D_act), t (B,) or 0-d) -> (B, H, D_act)``.
    """
    steps = [int(t) for t in timesteps]
    if not steps or min(steps) < 0 or len(set(steps)) != len(steps):
        raise ValueError(f"timesteps must be distinct non-negative ints, got {steps}")
    device = global_cond.device
    table = film_table(unet, torch.tensor(steps, device=device), global_cond)  # (S, B, F)
    row_of = torch.full((max(steps) + 1,), len(steps), dtype=torch.long)  # unknown -> S
    row_of[steps] = torch.arange(len(steps))
    row_of = row_of.to(device)
    batch_rows = torch.arange(global_cond.shape[0], device=device)
    channels = [_film_channels(block) for block in unet.film_blocks]

    def denoise(noisy_actions: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(B, H, D_act), (B,) -> (B, H, D_act)``."""
        t = unet._check_inputs(noisy_actions, t, global_cond)
        films = table[row_of[t], batch_rows].split(channels, dim=1)
        return unet.backbone(noisy_actions, films)

    return denoise


@dataclasses.dataclass
class Acceleration:
    """The fast paths switched on for one policy (its ``acceleration`` attribute).

    Attributes:
        compile_kwargs: ``torch.compile`` options of the compiled denoising loop; None: no
            compiled loop.
        max_compiled_loop_steps: samplers with at most this many steps run their whole loop as
            one compiled graph (unrolled); longer loops call the (compiled) networks per step.
    """

    compile_kwargs: dict[str, Any] | None = None
    max_compiled_loop_steps: int = 16
    #: plan -> (the sampler it was built for, its compiled loop); rebuilt, never copied.
    _loops: dict[SamplingPlan, tuple[Any, Callable[..., torch.Tensor]]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )

    def __getstate__(self) -> dict[str, Any]:
        """Copies (``copy.deepcopy``: the EMA model; pickling) drop the compiled loops."""
        return {**self.__dict__, "_loops": {}}

    @staticmethod
    def conditioned(denoiser: nn.Module, global_cond: torch.Tensor, timesteps: Sequence[int]) -> DenoiseFn:
        """The denoiser's per-chunk conditioning: the FiLM table for the U-Net, else its own
        :meth:`~rlox_dp.networks.Denoiser.conditioned`."""
        if isinstance(denoiser, ConditionalUnet1D):
            return film_conditioned(denoiser, global_cond, timesteps)
        return denoiser.conditioned(global_cond, timesteps)

    def sample(self, policy: Any, cond: torch.Tensor, x: torch.Tensor, plan: SamplingPlan,
               noises: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """``policy.sampler``'s loop along ``plan`` from ``x`` ``(B, H, D_act)`` with conditioning
        ``cond`` ``(B, C)`` and the step ``noises`` -> ``(B, H, D_act)``."""
        compiled = (self.compile_kwargs is not None and len(plan) <= self.max_compiled_loop_steps
                    and not torch.is_grad_enabled())
        if compiled:
            return self._compiled_loop(policy, plan)(cond, x, noises)
        denoise = self.conditioned(policy.denoiser, cond, plan.timesteps)
        return policy.sampler.run(denoise, x, plan, noises)

    def _compiled_loop(self, policy: Any, plan: SamplingPlan) -> Callable[..., torch.Tensor]:
        """``torch.compile`` of ``(cond, x, noises) -> (B, H, D_act)``: the policy's sampler's loop
        along ``plan``, built on first use and again for another sampler (or plan)."""
        sampler, denoiser = policy.sampler, policy.denoiser
        if plan not in self._loops or self._loops[plan][0] is not sampler:
            conditioned = self.conditioned

            def denoising_loop(
                cond: torch.Tensor, x: torch.Tensor, noises: list[torch.Tensor | None]
            ) -> torch.Tensor:
                return sampler.run(conditioned(denoiser, cond, plan.timesteps), x, plan, noises)

            # torch.compile caches graphs per code object, at most `recompile_limit` (8) of them,
            # beyond which it silently runs eager; each loop (policy x plan) is its own graph,
            # so each gets its own copy of the code object instead of sharing one cache.
            own_code = types.FunctionType(
                denoising_loop.__code__.replace(), denoising_loop.__globals__,
                denoising_loop.__name__, denoising_loop.__defaults__, denoising_loop.__closure__,
            )
            self._loops[plan] = (sampler, torch.compile(own_code, **(self.compile_kwargs or {})))
        return self._loops[plan][1]


def choose_convolutions(denoiser: nn.Module, gemm_conv: bool | str | None = None) -> None:
    """Make each ``nn.Conv1d`` of ``denoiser`` where :class:`GemmConv1d` applies one of the two
    classes (in place; same parameters): per :func:`gemm_conv_is_faster` on the network's own
    input lengths (``"auto"``, on the CPU), or all / none of them (``True`` / ``False``).

    Args:
        denoiser: a :class:`~rlox_dp.networks.Denoiser`.
        gemm_conv: True, False, "auto"; None reads :data:`GEMM_CONV_ENV` (default "auto").
    """
    setting = _gemm_setting(gemm_conv)
    convs = [m for m in denoiser.modules() if isinstance(m, nn.Conv1d) and _gemm_applies(m)]
    if setting == "auto" and convs and convs[0].weight.device.type != "cpu":
        setting = False  # the product path is CPU-only
    if setting == "auto" and convs:
        lengths = _input_lengths(denoiser, convs)
        use = {conv: conv in lengths and gemm_conv_is_faster(conv, lengths[conv]) for conv in convs}
    else:
        use = dict.fromkeys(convs, bool(setting))
    for conv, faster in use.items():
        conv.__class__ = GemmConv1d if faster else nn.Conv1d


def accelerate(policy: Any, compile_kwargs: dict[str, Any] | None = None, *,
               gemm_conv: bool | str | None = None) -> Any:
    """Switch the inference fast paths (module docstring) on for ``policy``, in place.

    A policy without a denoiser and a sampler (e.g. BC) is returned unchanged. Calling it again
    keeps what is on (the convolutions chosen the first time, unless ``gemm_conv`` is given) and
    updates the compiled loop's options when ``compile_kwargs`` is given.

    Args:
        policy: a :class:`~rlox_dp.algorithms.DiffusionPolicy` (or subclass).
        compile_kwargs: ``torch.compile`` options of the compiled denoising loop (what
            ``compile_networks`` passes); None: no compiled loop (unless one was on already).
        gemm_conv: :class:`GemmConv1d` where it applies: True, False, or "auto" (timed on this
            machine, :func:`choose_convolutions`); None: :data:`GEMM_CONV_ENV`, default "auto".

    Returns:
        ``policy``.
    """
    denoiser = getattr(policy, "denoiser", None)
    if denoiser is None or getattr(policy, "sampler", None) is None:
        return policy
    current = getattr(policy, "acceleration", None)
    if current is None or gemm_conv is not None:
        choose_convolutions(denoiser, gemm_conv)
    if compile_kwargs is None and current is not None:
        compile_kwargs = current.compile_kwargs
    policy.acceleration = Acceleration(
        compile_kwargs=None if compile_kwargs is None else dict(compile_kwargs)
    )
    return policy
