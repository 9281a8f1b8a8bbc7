"""What the decoder UNet is conditioned on: a DualViTok code map, and SDXL inputs set to zero.

The released decoder keeps the SDXL UNet unchanged except for `conv_in`: the merged 64-channel
DualViTok code map (semantic codes upsampled to the pixel grid, then pixel codes) is concatenated
to the noisy latents. Text cross-attention and the pooled text embedding are fed zeros, and the six
SDXL time ids are all zero except the last, which carries the output size's index. Training and
inference both build their UNet inputs here, so the two cannot drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TEXT_SEQUENCE_LENGTH",
    "module_device",
    "code_map_from_indices",
    "code_map_from_images",
    "resize_to_latent_grid",
    "pooled_text_dim",
    "check_decoder_unet",
    "zero_text_conditioning",
    "code_map_channels",
]

# SDXL's CLIP context length; the zero "prompt" keeps this shape.
TEXT_SEQUENCE_LENGTH = 77
_NUM_TIME_IDS = 6


def module_device(module: nn.Module) -> torch.device:
    """Device of a module's first parameter (or buffer); CPU for a module without tensors."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation behaviour for the call (DualViTok adds training-time code noise), mode restored after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def code_map_from_indices(dualvitok: nn.Module, indices_semantic: torch.Tensor, indices_pixel: torch.Tensor) -> torch.Tensor:
    """Merged code map [B, C_sem + C_pix, hp, wp] for code indices, in the DualViTok's own dtype."""
    if indices_semantic.ndim != 3 or indices_pixel.ndim != 3:
        raise ValueError(
            "vq_indices must be (semantic [B, hs, ws], pixel [B, hp, wp]) integer tensors; got shapes "
            f"{tuple(indices_semantic.shape)} and {tuple(indices_pixel.shape)}"
        )
    if indices_semantic.shape[0] != indices_pixel.shape[0]:
        raise ValueError(
            f"semantic and pixel indices disagree on the batch size: {indices_semantic.shape[0]} vs {indices_pixel.shape[0]}"
        )
    device = module_device(dualvitok)
    with _eval_mode(dualvitok):
        codes_semantic, codes_pixel = dualvitok.indices_to_codes(indices_semantic.to(device), indices_pixel.to(device))
        return dualvitok.merge_quants(codes_semantic, codes_pixel)


@torch.no_grad()
def code_map_from_images(dualvitok: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenize [B, 3, H, W] images in [-1, 1]; returns (code map, semantic indices, pixel indices).

    The map is rebuilt from the indices, i.e. from exact codebook vectors; the reference used the
    straight-through quants, which equal them up to float rounding.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a [B, 3, H, W] tensor in [-1, 1]; got {shape}")
    parameter_dtype = next(dualvitok.parameters()).dtype
    with _eval_mode(dualvitok):
        indices_semantic, indices_pixel = dualvitok.encode_code(images.to(module_device(dualvitok), parameter_dtype))
    code_map = code_map_from_indices(dualvitok, indices_semantic, indices_pixel)
    return code_map, indices_semantic, indices_pixel


def resize_to_latent_grid(code_map: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of the code map to the latent grid (a 4x upsample at 2x decoding)."""
    if tuple(code_map.shape[-2:]) == tuple(latent_size):
        return code_map
    return F.interpolate(code_map, size=tuple(latent_size), mode="nearest")


def pooled_text_dim(unet_config: Any) -> int:
    """Width of the pooled text embedding: what `add_embedding` takes besides the 6 time ids (1280 in SDXL)."""
    if unet_config.addition_embed_type != "text_time":
        raise ValueError(
            f"the decoder UNet must use addition_embed_type='text_time' (SDXL); got {unet_config.addition_embed_type!r}"
        )
    width = unet_config.projection_class_embeddings_input_dim - _NUM_TIME_IDS * unet_config.addition_time_embed_dim
    if width <= 0:
        raise ValueError(
            "UNet config: projection_class_embeddings_input_dim "
            f"({unet_config.projection_class_embeddings_input_dim}) must exceed 6 * addition_time_embed_dim "
            f"({unet_config.addition_time_embed_dim})"
        )
    return width


def check_decoder_unet(unet: nn.Module, latent_channels: int, code_channels: int) -> None:
    """Fail early, naming the config field, when a UNet cannot take latents + code map."""
    config = unet.config
    expected = latent_channels + code_channels
    if config.in_channels != expected:
        raise ValueError(
            f"UNet in_channels is {config.in_channels}, but {latent_channels} latent + {code_channels} code-map "
            f"channels = {expected} are fed to it (the released decoder has 4 + 64 = 68)"
        )
    if not isinstance(config.cross_attention_dim, int):
        raise ValueError(f"UNet cross_attention_dim must be one integer; got {config.cross_attention_dim!r}")
    linear = unet.add_embedding.linear_1
    if linear.in_features != pooled_text_dim(config) + _NUM_TIME_IDS * config.addition_time_embed_dim:
        raise ValueError(
            f"UNet add_embedding takes {linear.in_features} features, not 6 * addition_time_embed_dim + pooled width"
        )


def zero_text_conditioning(
    unet_config: Any, batch_size: int, resolution_index: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(encoder_hidden_states, added_cond_kwargs) of a text-free SDXL call at one output size.

    Time ids are [0, 0, 0, 0, 0, resolution_index] for every row: original size, crop offset and
    target size are not used by this decoder; only the size index is.
    """
    hidden = torch.zeros(batch_size, TEXT_SEQUENCE_LENGTH, unet_config.cross_attention_dim, device=device, dtype=dtype)
    pooled = torch.zeros(batch_size, pooled_text_dim(unet_config), device=device, dtype=dtype)
    time_ids = torch.zeros(batch_size, _NUM_TIME_IDS, device=device, dtype=dtype)
    time_ids[:, -1] = float(resolution_index)
    return hidden, {"text_embeds": pooled, "time_ids": time_ids}


@torch.no_grad()
def code_map_channels(dualvitok: nn.Module) -> int:
    """Channels of the merged code map (64 for the released tokenizer), probed with code 0."""
    index = torch.zeros(1, 1, 1, dtype=torch.long)
    return code_map_from_indices(dualvitok, index, index).shape[1]
