"""Tiny, randomly initialised SDXL-shaped components for tests and CPU quickstarts.

They keep every config field the decoder relies on (text_time additional embedding, 6 time ids,
cross-attention width, VAE scaling factor and stride 8) at sizes that run in seconds on a CPU, so
code paths exercised with them are the ones the full-size checkpoint takes.
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

__all__ = ["SDXL_SCHEDULER_CONFIG", "tiny_unet_config", "tiny_vae_config", "tiny_sdxl_components", "save_tiny_sdxl"]

# The noise schedule of the SDXL base release (EulerDiscreteScheduler).
SDXL_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}


def tiny_unet_config(in_channels: int = 4) -> dict:
    """SDXL UNet layout (text_time embedding, cross-attention only at the coarse levels), tiny widths."""
    time_dim, pooled_dim = 4, 8
    return {
        "sample_size": 16,
        "in_channels": in_channels,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        "block_out_channels": (8, 16, 16),
        "layers_per_block": 1,
        "transformer_layers_per_block": 1,
        "attention_head_dim": (2, 2, 4),
        "norm_num_groups": 4,
        "cross_attention_dim": 16,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": time_dim,
        "projection_class_embeddings_input_dim": 6 * time_dim + pooled_dim,
    }


def tiny_vae_config() -> dict:
    """SDXL VAE layout (stride 8, 4 latent channels, SDXL scaling factor), tiny widths."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (8, 8, 16, 16),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 64,
        "scaling_factor": 0.13025,
        "force_upcast": True,
        "mid_block_add_attention": False,
    }


def tiny_sdxl_components(
    code_channels: int = 0, seed: int = 0
) -> tuple[AutoencoderKL, UNet2DConditionModel, EulerDiscreteScheduler]:
    """(vae, unet, scheduler); `code_channels` > 0 widens the UNet input like the decoder's."""
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config(tiny_vae_config())
    unet = UNet2DConditionModel.from_config(tiny_unet_config(4 + code_channels))
    scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    return vae.eval(), unet.eval(), scheduler


def save_tiny_sdxl(directory: str | os.PathLike, code_channels: int = 0, seed: int = 0) -> None:
    """Write `unet/`, `vae/`, `scheduler/` like an SDXL (or, with code channels, decoder) release."""
    vae, unet, scheduler = tiny_sdxl_components(code_channels, seed)
    vae.save_pretrained(os.path.join(directory, "vae"))
    unet.save_pretrained(os.path.join(directory, "unet"))
    scheduler.save_pretrained(os.path.join(directory, "scheduler"))
