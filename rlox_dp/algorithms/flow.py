"""Flow matching policy (rectified flow / conditional flow matching, as in pi0): algorithm ``"flow"``.

Time convention and path: ``t in [0, 1]`` with **t = 0 the data and t = 1 the noise**, the
straight (rectified-flow / optimal-transport CFM) interpolation

    x_t = (1 - t) a + t eps,    eps ~ N(0, I),    target velocity  u = dx_t/dt = eps - a,

for a normalized action chunk ``a`` ``(B, H, D_act)``. Training draws ``t ~ U(0, 1)`` per window
and regresses the denoiser's output at ``(x_t, t T)`` on ``u`` (mean squared error, padded actions
masked), so the network learns ``v(x, t) = E[eps - a | x_t = x]``, whose ODE ``dx/dt = v`` carries
``N(0, I)`` at ``t = 1`` to the data at ``t = 0`` (Liu et al. 2023; Lipman et al. 2023). Inference
integrates it with Euler or Heun (:class:`~rlox_dp.diffusion.flow_samplers.FlowSampler`) in
``num_inference_steps`` steps, switchable after training with :meth:`configure_inference`.

Everything else is Diffusion Policy's: observation encoder, denoisers (U-Net, MLP, ...),
normalizers, buffers, Trainer, checkpoints, compiled denoising loops. The network is fed
``t T`` (``T = num_train_timesteps``) so that its timestep embedding sees the range it sees in a
diffusion model; at inference ``t`` lies on the grid ``k / T``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

import torch

from rlox_dp.algorithms.base import PolicyConfig, register_algorithm
from rlox_dp.algorithms.bc import masked_mse
from rlox_dp.algorithms.diffusion import DiffusionConfig, DiffusionPolicy
from rlox_dp.buffers import Batch
from rlox_dp.diffusion.flow_samplers import FlowSampler
from rlox_dp.distributed import GlobalBatch

__all__ = ["FlowConfig", "FlowPolicy", "global_batch_draws"]


def global_batch_draws(
    actions: torch.Tensor, generator: torch.Generator | None, global_batch: GlobalBatch | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eps, u)`` for this process's windows: ``N(0, I)`` noise like ``actions`` ``(B, H, D_act)``
    and ``U(0, 1)`` draws ``(B,)``, both drawn for the whole ``global_batch`` (``None``: ``actions``
    are the global batch) and sliced, so data-parallel ranks reproduce one process."""
    b = actions.shape[0]
    total, start = global_batch or (b, 0)
    like = {"generator": generator, "device": actions.device, "dtype": actions.dtype}
    noise = torch.randn((total, *actions.shape[1:]), **like)
    u = torch.rand((total,), **like)
    return noise[start : start + b], u[start : start + b]


@dataclasses.dataclass
class FlowConfig(DiffusionConfig):
    """Flow matching options: Diffusion Policy's, with these meanings (module docstring).

    Attributes:
        noise_scheduler_type: the ODE solver, ``"Euler"`` (1 network call per step) or
            ``"Heun"`` (2nd order, ``2n - 1`` calls for ``n`` steps).
        num_inference_steps: solver steps (default 10, pi0's); ``None``: ``num_train_timesteps``.
        num_train_timesteps: the time scale: the network is fed ``t * num_train_timesteps``
            and inference times lie on the grid ``k / num_train_timesteps`` (so at most that many
            steps).
        The diffusion-only fields (``beta_schedule``, ``beta_start``, ``beta_end``,
        ``prediction_type``, ``clip_sample``, ``clip_sample_range``, ``ddim_eta``) are unused.
    """

    noise_scheduler_type: Literal["Euler", "Heun"] = "Euler"  # type: ignore[assignment]
    num_inference_steps: int | None = 10


@register_algorithm("flow")
class FlowPolicy(DiffusionPolicy):
    """Conditional flow matching over action chunks (module docstring)."""

    config_class: ClassVar[type[PolicyConfig]] = FlowConfig
    config: FlowConfig

    def _build_sampler(self, config: FlowConfig | None = None) -> FlowSampler:  # type: ignore[override]
        config = config if config is not None else self.config
        return FlowSampler(config.num_train_timesteps, config.noise_scheduler_type)

    def compute_loss(
        self, batch: Batch, generator: torch.Generator | None = None, *, global_batch: GlobalBatch | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Velocity regression of a normalized batch (actions ``(B, H, D_act)``, padding masked)."""
        actions = batch.action
        cond = self.obs_encoder(batch.obs, generator)
        noise, t = global_batch_draws(actions, generator, global_batch)
        t_ = t.view(-1, *([1] * (actions.ndim - 1)))
        noisy = (1.0 - t_) * actions + t_ * noise
        pred = self.denoiser(noisy, t * self.config.num_train_timesteps, cond)
        loss = masked_mse(pred, noise - actions, batch.action_is_pad)
        return loss, {"mse": loss.detach()}
