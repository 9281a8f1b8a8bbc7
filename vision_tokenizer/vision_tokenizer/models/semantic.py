"""Semantic branch of DualViTok: ViT features -> 32-d codes' input, and codes -> ViT-feature reconstruction.

Token sequences of several images are packed into one [sum(h*w), C] tensor; attention stays
inside each image (`cu_seqlens`), so images of different sizes share one forward pass. The extra
blocks use 2-D RoPE over the raster (row, col) of each merged grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig

from .vit import (
    Qwen2VLVisionRotaryEmbedding,
    build_vision_blocks,
    build_vit,
    raster_position_ids,
    run_blocks_batched,
    vision_block_config,
    vit_features,
)

__all__ = ["SemanticEncoder", "SemanticDecoder", "rows_to_maps", "maps_to_rows"]

PROJ_LAYERS = ("linear", "linear_norm")
TARGET_MLPS = ("norm",)
_TARGET_NORM_EPS = 1e-6


def _projection(kind: str, in_features: int, out_features: int) -> nn.Sequential:
    """`proj_out`: Linear, optionally followed by an affine LayerNorm (keys `proj_out.0`, `proj_out.1`)."""
    if kind not in PROJ_LAYERS:
        raise ValueError(f"proj_layer must be one of {PROJ_LAYERS}, got {kind!r}")
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    if kind == "linear_norm":
        layers.append(nn.LayerNorm(out_features))
    return nn.Sequential(*layers)


def rows_to_maps(rows: torch.Tensor, grid_hw: Sequence[tuple[int, int]]) -> torch.Tensor | list[torch.Tensor]:
    """Packed rows [sum(h*w), C] -> [B, C, h, w] when all grids match, else a list of [1, C, h, w]."""
    channels = rows.shape[-1]
    if len(set(grid_hw)) == 1:
        height, width = grid_hw[0]
        return rows.reshape(len(grid_hw), height, width, channels).permute(0, 3, 1, 2).contiguous()
    sizes = [height * width for height, width in grid_hw]
    return [
        part.reshape(1, height, width, channels).permute(0, 3, 1, 2).contiguous()
        for part, (height, width) in zip(rows.split(sizes), grid_hw)
    ]


def maps_to_rows(maps: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Inverse of `rows_to_maps`: a [B, C, h, w] tensor or list of [1, C, h, w] -> (rows, grid_hw)."""
    if isinstance(maps, torch.Tensor):
        maps = [maps]
    rows, grid_hw = [], []
    for feature_map in maps:
        if feature_map.ndim != 4:
            raise ValueError(f"expected feature maps [B, C, h, w], got shape {tuple(feature_map.shape)}")
        batch, _, height, width = feature_map.shape
        rows.append(feature_map.permute(0, 2, 3, 1).reshape(batch * height * width, -1))
        grid_hw.extend([(height, width)] * batch)
    return torch.cat(rows), grid_hw


def _run_blocks(
    blocks: nn.ModuleList,
    rotary: Qwen2VLVisionRotaryEmbedding,
    hidden: torch.Tensor,
    grid_hw: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """Apply Qwen2-VL vision blocks to packed per-image sequences with raster 2-D RoPE.

    Equal grids run as one [B, L, C] batch; mixed grids run packed, attention split by `cu_seqlens`.
    """
    if len(set(grid_hw)) == 1:
        positions = raster_position_ids(list(grid_hw[:1]), device=hidden.device)
        batched = hidden.reshape(len(grid_hw), positions.shape[0], -1)
        return run_blocks_batched(blocks, batched, rotary(hidden, positions)).flatten(0, 1)
    lengths = [height * width for height, width in grid_hw]
    cu_seqlens = torch.tensor([0, *lengths], device=hidden.device).cumsum(0, dtype=torch.int32)
    position_embeddings = rotary(hidden, raster_position_ids(list(grid_hw), device=hidden.device))
    for block in blocks:
        hidden = block(
            hidden, cu_seqlens=cu_seqlens, max_seqlen=max(lengths), position_embeddings=position_embeddings
        )
    return hidden


class SemanticEncoder(nn.Module):
    """Qwen2-VL ViT (+merger) -> LayerNorm target -> `proj_in` -> extra blocks -> `proj_out` (z)."""

    def __init__(
        self,
        vit: Qwen2VLVisionConfig,
        embed_dim: int = 1280,
        z_channels: int = 32,
        num_blocks: int = 4,
        proj_layer: str = "linear",
        target_mlp: str = "norm",
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        if target_mlp not in TARGET_MLPS:
            raise ValueError(f"target_mlp must be one of {TARGET_MLPS}, got {target_mlp!r}")
        self.model = build_vit(vit)
        hidden = vit.hidden_size
        self.target_mlp = nn.LayerNorm(hidden, eps=_TARGET_NORM_EPS, elementwise_affine=False)
        # A 1x1 conv in the checkpoint, applied to token rows as a Linear.
        self.proj_in = nn.Conv2d(hidden, embed_dim, kernel_size=1)
        block_config = vision_block_config(embed_dim, num_blocks, attn_implementation)
        self.blocks = build_vision_blocks(block_config)
        self.rotary_pos_emb = Qwen2VLVisionRotaryEmbedding(block_config)
        self.proj_out = _projection(proj_layer, embed_dim, z_channels)
        self.merge_size = vit.spatial_merge_size

    def merged_grid(self, grid_thw: torch.Tensor) -> list[tuple[int, int]]:
        """Semantic token grid (h, w) per image from the ViT patch grid."""
        return [(int(h) // self.merge_size, int(w) // self.merge_size) for h, w in grid_thw[:, 1:].tolist()]

    def forward(self, patches: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z rows [N, z_channels], target rows [N, hidden]) for packed ViT input; N = sum(h*w)."""
        features = vit_features(self.model, patches, grid_thw)
        return self.from_vit_features(features, self.merged_grid(grid_thw))

    def from_vit_features(
        self, features: torch.Tensor, grid_hw: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        target = self.target_mlp(features)
        hidden = F.linear(target, self.proj_in.weight.flatten(1), self.proj_in.bias)
        hidden = _run_blocks(self.blocks, self.rotary_pos_emb, hidden, grid_hw)
        return self.proj_out(hidden), target


class SemanticDecoder(nn.Module):
    """Semantic codes -> reconstructed (normalised) ViT features: `proj_in` -> blocks -> `proj_out`."""

    def __init__(
        self,
        z_channels: int = 32,
        embed_dim: int = 1280,
        output_channels: int = 3584,
        num_blocks: int = 4,
        proj_layer: str = "linear_norm",
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        self.proj_in = nn.Linear(z_channels, embed_dim)
        block_config = vision_block_config(embed_dim, num_blocks, attn_implementation)
        self.blocks = build_vision_blocks(block_config)
        self.rotary_pos_emb = Qwen2VLVisionRotaryEmbedding(block_config)
        self.proj_out = _projection(proj_layer, embed_dim, output_channels)

    def forward(self, z: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """[B, z, h, w] -> [B, output_channels, h, w]; a list of [1, z, h, w] maps gives a list."""
        rows, grid_hw = maps_to_rows(z)
        hidden = _run_blocks(self.blocks, self.rotary_pos_emb, self.proj_in(rows), grid_hw)
        decoded = rows_to_maps(self.proj_out(hidden), grid_hw)
        if isinstance(z, torch.Tensor) or not isinstance(decoded, torch.Tensor):
            return decoded
        return list(decoded.split(1))
