"""The semantic branch's Qwen2-VL vision transformer (patch embed, 2-D RoPE blocks, 2x2 merger).

The modules are transformers' own `Qwen2VisionTransformerPretrainedModel` / `Qwen2VLVisionBlock`:
they have the official state-dict layout and compute the reference's numbers. Images of one size
run through the blocks as a real batch ([B, heads, L, d] attention, no per-image loop and no host
sync per layer); mixed sizes use transformers' packed forward, which attends within each image
(`cu_seqlens`). Neither builds a dense mask across the batch, unlike the reference.

The reference reads the ViT config from the Hub (`Emova-ollm/qwen2vit600m`); here that name
resolves to a built-in config, since every weight is in the tokenizer checkpoint anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import (
    Qwen2VisionTransformerPretrainedModel,
    Qwen2VLVisionBlock,
    Qwen2VLVisionRotaryEmbedding,
    apply_rotary_pos_emb_vision,
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
    "merge_window_position_ids",
    "run_blocks_batched",
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
    grids = [tuple(grid) for grid in grid_thw.tolist()]
    if len(set(grids)) != 1:
        return vit(patches, grid_thw=grid_thw).pooler_output
    frames, height, width = grids[0]
    hidden = vit.patch_embed(patches)
    positions = merge_window_position_ids(height, width, vit.spatial_merge_size, hidden.device).repeat(
        frames, 1
    )
    position_embeddings = vit.rotary_pos_emb(hidden, positions)
    hidden = run_blocks_batched(
        vit.blocks, hidden.reshape(len(grids), frames * height * width, -1), position_embeddings
    )
    return vit.merger(hidden.flatten(0, 1))


def _block_forward(
    block: Qwen2VLVisionBlock, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """One vision block on [B, L, C]: the same operations as the block's own forward, batched over B."""
    attn = block.attn
    batch, length, _ = hidden.shape
    qkv = attn.qkv(block.norm1(hidden)).reshape(batch, length, 3, attn.num_heads, attn.head_dim)
    query, key, value = qkv.unbind(2)
    query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
    attended = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=attn.scaling
    )
    hidden = hidden + attn.proj(attended.transpose(1, 2).reshape(batch, length, -1))
    return hidden + block.mlp(block.norm2(hidden))


def run_blocks_batched(
    blocks: Sequence[Qwen2VLVisionBlock],
    hidden: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Vision blocks over equal-length sequences [B, L, C]; RoPE (cos, sin) [L, head_dim] is shared.

    Honours activation checkpointing switched on through transformers (`activation_checkpointing_enable`).
    """
    cos, sin = position_embeddings
    for block in blocks:
        if getattr(block, "gradient_checkpointing", False) and block.training and torch.is_grad_enabled():
            recompute = getattr(block, "_gradient_checkpointing_func", None) or partial(
                checkpoint, use_reentrant=False
            )
            hidden = recompute(_block_forward, block, hidden, cos, sin)
        else:
            hidden = _block_forward(block, hidden, cos, sin)
    return hidden


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


def merge_window_position_ids(
    height: int, width: int, merge_size: int, device: torch.device | None = None
) -> torch.Tensor:
    """(row, col) of an h x w patch grid in the ViT's token order: merge windows in raster order, then
    the window's patches row by row. [h*w, 2]."""
    rows = torch.arange(height, device=device).view(-1, 1).expand(height, width)
    cols = torch.arange(width, device=device).view(1, -1).expand(height, width)
    windows = (height // merge_size, merge_size, width // merge_size, merge_size)
    return torch.stack([grid.reshape(windows).transpose(1, 2).flatten() for grid in (rows, cols)], dim=-1)


def raster_position_ids(grid_hw: list[tuple[int, int]], device: torch.device | None = None) -> torch.Tensor:
    """(row, col) of every token of each h x w grid in raster order, grids concatenated: [sum(h*w), 2]."""
    positions = []
    for height, width in grid_hw:
        rows = torch.arange(height, device=device).repeat_interleave(width)
        cols = torch.arange(width, device=device).repeat(height)
        positions.append(torch.stack([rows, cols], dim=-1))
    return torch.cat(positions)
