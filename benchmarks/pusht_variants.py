"""The PushT benchmark's variants: registered algorithm and config overrides per observation mode,
their labels, step budgets and the tiny ``--quick`` settings (``benchmarks/pusht.py`` trains them;
``pusht_fewstep.py`` reuses the preset U-Net)."""

from __future__ import annotations

import argparse
from typing import Any

from rlox_dp.envs.pusht import PUSHT_ENV_ID
from rlox_dp.presets import preset_for

EVAL_ENVS = 10

#: the shared window settings (the paper's PushT: 2 observations, 16 predicted, 8 executed actions)
WINDOW = {"n_obs_steps": 2, "horizon": 16, "n_action_steps": 8}

#: variant -> (registered algorithm, config overrides) for the low-dimensional modes. The U-Nets are
#: the paper's architecture at a quarter and an eighth of its width, sized so that the default
#: budget trains in under an hour on one CPU thread (``benchmarks/pusht_fastest.py`` compares
#: them with the MLP denoiser and fewer sampler steps).
LOWDIM_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "diffusion": ("diffusion", {**WINDOW, "denoiser": "unet", "down_dims": (64, 128, 256),
                                "batch_size": 64, "lr": 3e-4, "noise_scheduler_type": "DDIM",
                                "num_inference_steps": 10}),
    # the PushT diffusion preset itself (U-Net 32-64-128, windows, optimizer, sampler), so that the
    # preset users get is exactly what this benchmark measures; run settings come from the CLI
    "diffusion_small": ("diffusion", {k: v for k, v in preset_for("diffusion", PUSHT_ENV_ID).items()
                                      if k not in ("total_steps", "n_eval_episodes", "n_eval_envs")}),
    "diffusion_mlp": ("diffusion", {**WINDOW, "denoiser": "mlp", "hidden_dim": 512, "n_layers": 4,
                                    "batch_size": 256, "lr": 1e-3, "noise_scheduler_type": "DDIM",
                                    "num_inference_steps": 10}),
    "bc": ("bc", {"n_obs_steps": 2, "batch_size": 256, "lr": 1e-3}),
    "bc_chunk": ("bc_chunk", {**WINDOW, "batch_size": 256, "lr": 1e-3}),
    # DP-T: the paper's transformer at half its width and depth (1.2 M parameters, like the small
    # U-Net's 1.4 M; the paper's 9 M one costs ~10x the small U-Net per step), with the original's
    # AdamW (betas (0.9, 0.95), weight decay 0.1 on linear and attention weights, 1000 warmup
    # steps) at the U-Net rows' batch and learning rate
    "diffusion_transformer": ("diffusion", {**WINDOW, "denoiser": "transformer", "n_emb": 128,
                                            "n_layer": 4, "batch_size": 64, "lr": 3e-4,
                                            "lr_warmup_steps": 1000, "noise_scheduler_type": "DDIM",
                                            "num_inference_steps": 10}),
}
#: image variants: one image encoder for all (``--vision-backbone``: the compact conv net by default,
#: ``resnet18`` for the paper's ResNet-18 GN; spatial softmax, 84x84 crops), bf16 encoder trunk where
#: the CPU/GPU has native bf16; the same batch, learning rate and windows for every variant.
_IMAGE_COMMON = {"batch_size": 64, "lr": 3e-4, "vision_precision": "auto"}
IMAGE_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "diffusion": ("diffusion", {**WINDOW, **_IMAGE_COMMON, "denoiser": "unet", "down_dims": (64, 128, 256),
                                "noise_scheduler_type": "DDIM", "num_inference_steps": 10}),
    "diffusion_small": ("diffusion", {**WINDOW, **_IMAGE_COMMON, "denoiser": "unet",
                                      "down_dims": (32, 64, 128), "noise_scheduler_type": "DDIM",
                                      "num_inference_steps": 10}),
    "diffusion_mlp": ("diffusion", {**WINDOW, **_IMAGE_COMMON, "denoiser": "mlp",
                                    "noise_scheduler_type": "DDIM", "num_inference_steps": 10}),
    "bc": ("bc", {"n_obs_steps": 2, **_IMAGE_COMMON}),
    "bc_chunk": ("bc_chunk", {**WINDOW, **_IMAGE_COMMON}),
}
LABELS = {"diffusion": "Diffusion Policy (U-Net 64-128-256)",
          "diffusion_small": "Diffusion Policy (U-Net 32-64-128)",
          "diffusion_mlp": "Diffusion Policy (MLP)",
          "bc": "BC-MLP", "bc_chunk": "BC-chunk (H=16)",
          "diffusion_transformer": "Diffusion Policy (transformer 128x4)"}
#: default gradient-step budgets (all variants get the same); the keypoint budget fits ~60 min of
#: the diffusion U-Net on one CPU thread of this machine.
DEFAULT_STEPS = {"keypoints": 15_000, "state": 15_000, "image": 20_000}
#: tiny networks and budgets for --quick (smoke test): checks the pipeline, not the numbers.
QUICK = {
    "diffusion": {"down_dims": (16, 32), "n_groups": 4, "diffusion_step_embed_dim": 16,
                  "num_train_timesteps": 10, "num_inference_steps": 2, "batch_size": 8,
                  "spatial_softmax_num_keypoints": 4},
    "diffusion_small": {"down_dims": (16, 32), "n_groups": 4, "diffusion_step_embed_dim": 16,
                        "num_train_timesteps": 10, "num_inference_steps": 2, "batch_size": 8},
    "diffusion_mlp": {"hidden_dim": 32, "n_layers": 1, "num_train_timesteps": 10,
                      "num_inference_steps": 2, "batch_size": 8},
    "bc": {"hidden_dim": 32, "n_layers": 2, "batch_size": 8},
    "bc_chunk": {"hidden_dim": 32, "n_layers": 2, "batch_size": 8},
    "diffusion_transformer": {"n_emb": 16, "n_layer": 1, "n_head": 2, "num_train_timesteps": 10,
                              "num_inference_steps": 2, "batch_size": 8, "lr_warmup_steps": 1,
                              "spatial_softmax_num_keypoints": 4},
}
QUICK_STEPS = 3


def variant_config(variant: str, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(algorithm, config dict)`` of ``variant`` under the command-line options."""
    table = IMAGE_VARIANTS if args.obs == "image" else LOWDIM_VARIANTS
    if variant not in table:
        raise ValueError(f"--variants: {variant!r} has no setting for --obs {args.obs}; "
                         f"expected one of {list(table)}")
    algorithm, overrides = table[variant]
    config = {**overrides, "obs": args.obs, "total_steps": args.steps, "log_every": 100,
              "checkpoint_every": 10**9, "eval_every": args.eval_every, "n_eval_episodes": args.episodes,
              "n_eval_envs": min(EVAL_ENVS, args.episodes), "eval_seed": args.eval_seed,
              "lr_warmup_steps": overrides.get("lr_warmup_steps", min(500, max(1, args.steps // 10)))}
    if args.obs == "image":
        config["vision_backbone"] = args.vision_backbone
        if args.curve_episodes:  # cheaper in-loop evaluations; the final one uses --episodes
            config["n_eval_episodes"] = args.curve_episodes
            config["n_eval_envs"] = min(EVAL_ENVS, args.curve_episodes)
    if args.run_dir:
        config["checkpoint_every"] = args.eval_every or 1000
    if args.quick:
        config.update(QUICK[variant])
    return algorithm, config
