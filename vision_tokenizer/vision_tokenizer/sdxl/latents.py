"""Moving between VAE latents and the normalised latents the UNet is trained on.

SDXL's VAE config carries a `scaling_factor` and, in some releases, per-channel `latents_mean` /
`latents_std`. Training normalises with them and inference undoes exactly that, so both
directions live here, read from the VAE config each time.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

__all__ = ["normalize_latents", "denormalize_latents", "encode_to_latents"]


def _mean_std(vae: AutoencoderKL, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    mean = getattr(vae.config, "latents_mean", None)
    std = getattr(vae.config, "latents_std", None)
    if mean is None or std is None:
        return None
    shape = (1, len(mean), 1, 1)
    return (
        torch.tensor(mean, device=like.device, dtype=like.dtype).view(shape),
        torch.tensor(std, device=like.device, dtype=like.dtype).view(shape),
    )


def normalize_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> UNet space: (z - mean) * scale / std, or z * scale without mean/std."""
    scale = vae.config.scaling_factor
    stats = _mean_std(vae, latents)
    if stats is None:
        return latents * scale
    mean, std = stats
    return (latents - mean) * scale / std


def denormalize_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """UNet space -> raw VAE latents: z * std / scale + mean, or z / scale without mean/std."""
    scale = vae.config.scaling_factor
    stats = _mean_std(vae, latents)
    if stats is None:
        return latents / scale
    mean, std = stats
    return latents * std / scale + mean


@torch.no_grad()
def encode_to_latents(vae: AutoencoderKL, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample normalised latents of [B, 3, H, W] images in [-1, 1] (in the VAE's dtype and device)."""
    posterior = vae.encode(images.to(vae.device, vae.dtype)).latent_dist
    return normalize_latents(vae, posterior.sample(generator=generator))
