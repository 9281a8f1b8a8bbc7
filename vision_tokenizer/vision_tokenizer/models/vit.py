"""The semantic branch's Qwen2-VL vision transformer (patch embed, 2-D RoPE blocks, 2x2 merger).

transformers' own `Qwen2VisionTransformerPretrainedModel` has the official state-dict layout and
computes the same numbers as the reference; it attends within each image (per-image SDPA or varlen
flash attention), never through a dense mask over the whole batch. The reference downloads the
weights' config from the Hub (`Emova-ollm/qwen2vit600m`); here that name resolves to a built-in
config, since every weight is in the tokenizer checkpoint anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLVisionBlock,
    Qwen2VLVisionRotaryEmbedding,
)

__all__ = [
    "BUILTIN_VIT_CONFIGS",
    "VIT_CONFIG_KEYS",
    "vit_config",
    "build_vit",
    "vit_features",
    "vision_block_config",
    "build_vision_blocks",
    "raster_position_ids",
    "Qwen2VisionTransformerPretrainedModel",
    "Qwen2VLVisionBlock",
    "Qwen2VLVisionRotaryEmbedding",
]

# Hyper-parameters of the Qwen2-VL(-7B) vision tower that `Emova-ollm/qwen2vit600m` names.
BUILTIN_VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "Emova-ollm/qwen2vit600m": {
        "depth": 32,
        "embed_dim": 1280,
        "hidden_size": 3584,
        "num_heads": 16,
        "mlp_ratio": 4,
        "in_channels": 3,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "hidden_act": "quick_gelu",
    },
}

VIT_CONFIG_KEYS = frozenset(
    {
        "depth",
        "embed_dim",
        "hidden_size",
        "hidden_act",
        "mlp_ratio",
        "num_heads",
        "in_channels",
        "patch_size",
        "spatial_merge_size",
        "temporal_patch_size",
        "initializer_range",
    }
)

# The extra blocks of the semantic encoder/decoder use these values whatever their width (the
# reference builds them from the config class defaults), so a 64-wide block has 16 heads of 4.
_EXTRA_BLOCK_HEADS = 16
_EXTRA_BLOCK_MLP_RATIO = 4
_EXTRA_BLOCK_ACT = "quick_gelu"


def vit_config(
    spec: str | Mapping[str, Any] | Qwen2VLVisionConfig, attn_implementation: str = "sdpa"
) -> Qwen2VLVisionConfig:
    """Resolve a ViT spec to a config: a built-in name, a dict of hyper-parameters, or a config.

    Names are never looked up on the Hub; unknown names and unknown dict keys raise `ValueError`.
    """
    if isinstance(spec, Qwen2VLVisionConfig):
        return spec
    if isinstance(spec, str):
        if spec not in BUILTIN_VIT_CONFIGS:
            raise ValueError(
                f"unknown semantic ViT {spec!r}; built-in: {sorted(BUILTIN_VIT_CONFIGS)} "
                "(pass a dict of ViT hyper-parameters for anything else; nothing is downloaded)"
            )
        spec = BUILTIN_VIT_CONFIGS[spec]
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"ViT spec must be a name, a dict or a Qwen2VLVisionConfig, got {type(spec).__name__}"
        )
    unknown = sorted(set(spec) - VIT_CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown ViT config keys {unknown}; allowed: {sorted(VIT_CONFIG_KEYS)}")
    return Qwen2VLVisionConfig(**dict(spec), attn_implementation=attn_implementation)


def build_vit(config: Qwen2VLVisionConfig) -> Qwen2VisionTransformerPretrainedModel:
    """The ViT with merger; keys `patch_embed.proj.weight`, `blocks.{i}.*`, `merger.*`."""
    return Qwen2VisionTransformerPretrainedModel(config)


def vit_features(
    vit: Qwen2VisionTransformerPretrainedModel, patches: torch.Tensor, grid_thw: torch.Tensor
) -> torch.Tensor:
    """Merger output [sum(h*w/4), hidden]: each image's merged grid in raster order, images concatenated."""
    return vit(patches, grid_thw=grid_thw).pooler_output


def vision_block_config(embed_dim: int, depth: int, attn_implementation: str = "sdpa") -> Qwen2VLVisionConfig:
    """Config of the semantic encoder/decoder's extra blocks (16 heads, MLP x4, quick GELU)."""
    return Qwen2VLVisionConfig(
        depth=depth,
        embed_dim=embed_dim,
        num_heads=_EXTRA_BLOCK_HEADS,
        mlp_ratio=_EXTRA_BLOCK_MLP_RATIO,
        hidden_act=_EXTRA_BLOCK_ACT,
        attn_implementation=attn_implementation,
    )


def build_vision_blocks(config: Qwen2VLVisionConfig) -> torch.nn.ModuleList:
    if config.embed_dim % config.num_heads or (config.embed_dim // config.num_heads) % 4:
        raise ValueError(
            f"embed_dim {config.embed_dim} must split into {config.num_heads} heads whose size is a multiple of 4 "
            "(2-D rotary embedding)"
        )
    return torch.nn.ModuleList(Qwen2VLVisionBlock(config) for _ in range(config.depth))


def raster_position_ids(grid_hw: list[tuple[int, int]], device: torch.device | None = None) -> torch.Tensor:
    """(row, col) of every token of each h x w grid in raster order, grids concatenated: [sum(h*w), 2]."""
    positions = []
    for height, width in grid_hw:
        rows = torch.arange(height, device=device).repeat_interleave(width)
        cols = torch.arange(width, device=device).repeat(height)
        positions.append(torch.stack([rows, cols], dim=-1))
    return torch.cat(positions)
