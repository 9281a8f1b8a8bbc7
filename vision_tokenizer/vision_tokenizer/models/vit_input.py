"""Pixel preprocessing for the semantic branch: [-1, 1] images -> Qwen2-VL ViT patch rows.

The ViT sees a copy of the image resized to sides that are multiples of 28 (patch 14 x merge 2).
For the training anchors the target keeps the exact aspect ratio (`RESOLUTION_MAPPING`); other
sizes are floored to multiples of 28. The resize is PyTorch's antialiased bicubic in float32,
because the released codebooks were trained on exactly those pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "PATCH_SIZE",
    "TEMPORAL_PATCH_SIZE",
    "MERGE_SIZE",
    "RESOLUTION_MAPPING",
    "exact_aspect_fit",
    "vit_target_size",
    "semantic_grid_size",
    "prepare_vit_input",
]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE = 14
TEMPORAL_PATCH_SIZE = 2
MERGE_SIZE = 2
_SIDE_UNIT = PATCH_SIZE * MERGE_SIZE


def exact_aspect_fit(height: int, width: int, unit: int = _SIDE_UNIT) -> tuple[int, int]:
    """Largest (h, w) <= (height, width) with sides divisible by `unit` and h : w exactly height : width."""
    common = math.gcd(height, width)
    ratio_h, ratio_w = height // common, width // common
    step = math.lcm(unit // math.gcd(unit, ratio_h), unit // math.gcd(unit, ratio_w))
    scale = height // (step * ratio_h) * step
    return scale * ratio_h, scale * ratio_w


# Input sizes (height, width) the reference resizes with the exact aspect ratio kept: the square
# sizes, and the training-anchor shapes in landscape and portrait.
_SQUARE_SIDES = (256, 512)
_PORTRAIT_SHAPES = ((512, 384), (768, 384), (1024, 256), (576, 384), (960, 320))
RESOLUTION_MAPPING: dict[tuple[int, int], tuple[int, int]] = {
    size: exact_aspect_fit(*size)
    for size in (
        *((side, side) for side in _SQUARE_SIDES),
        *_PORTRAIT_SHAPES,
        *((w, h) for h, w in _PORTRAIT_SHAPES),
    )
}


def vit_target_size(height: int, width: int) -> tuple[int, int]:
    """Size (H', W') the ViT sees for an input of `height` x `width` pixels."""
    mapped = RESOLUTION_MAPPING.get((int(height), int(width)))
    if mapped is not None:
        return mapped
    return _floor_to_unit(height), _floor_to_unit(width)


def _floor_to_unit(side: int) -> int:
    return max(_SIDE_UNIT, side // _SIDE_UNIT * _SIDE_UNIT)


def semantic_grid_size(height: int, width: int) -> tuple[int, int]:
    """Semantic token grid (hs, ws) of an input image: one token per 28 x 28 pixels of the ViT input."""
    target_h, target_w = vit_target_size(height, width)
    return target_h // _SIDE_UNIT, target_w // _SIDE_UNIT


def _normalise(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> resized, clamped, CLIP-normalised pixels, same dtype as the input."""
    height, width = images.shape[-2:]
    target = vit_target_size(height, width)
    unit = (images.float() + 1) / 2
    if (height, width) != target:
        unit = F.interpolate(unit, size=target, mode="bicubic", align_corners=False, antialias=True)
    unit = unit.to(images.dtype).clamp(0, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=unit.dtype, device=unit.device).view(1, 3, 1, 1)
    return (unit - mean) / std


def _patchify(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, H', W'] -> [B * gh * gw, 3 * 2 * 14 * 14] rows in merge-window order.

    Rows run over images, then 2 x 2 merge windows in raster order, then the window's patches
    (row-major); each row is laid out (channel, frame, y, x) like the Conv3d weight, with the single
    frame duplicated to fill the temporal patch.
    """
    batch, channels, height, width = pixels.shape
    rows, cols = height // PATCH_SIZE, width // PATCH_SIZE
    grid = pixels.reshape(
        batch,
        channels,
        rows // MERGE_SIZE,
        MERGE_SIZE,
        PATCH_SIZE,
        cols // MERGE_SIZE,
        MERGE_SIZE,
        PATCH_SIZE,
    )
    # -> (batch, window row, window col, inner row, inner col, channel, y, x)
    grid = grid.permute(0, 2, 5, 3, 6, 1, 4, 7)
    grid = grid.unsqueeze(6).expand(*grid.shape[:6], TEMPORAL_PATCH_SIZE, PATCH_SIZE, PATCH_SIZE)
    return grid.reshape(batch * rows * cols, channels * TEMPORAL_PATCH_SIZE * PATCH_SIZE * PATCH_SIZE)


def _as_image_list(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Validate a list of images and give each a batch axis: [1, 3, H, W]."""
    result = []
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a torch.Tensor")
        if image.ndim == 3:
            image = image.unsqueeze(0)
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image {i}: expected shape [1, 3, H, W] or [3, H, W], got {tuple(image.shape)}")
        result.append(image)
    if not result:
        raise ValueError("no images given")
    return result


def prepare_vit_input(images: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn [-1, 1] images into ViT patch rows and their grids.

    `images` is a [B, 3, H, W] tensor or a list of [1, 3, H, W] / [3, H, W] tensors that may differ
    in size. Returns `(patches [N, 1176], grid_thw [B, 3] int64)` with the images' rows concatenated
    in input order; each grid row is (1, H'/14, W'/14).
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        batches = [images]
    else:
        batches = _as_image_list(images)
    patch_blocks = []
    grids = []
    for batch in batches:
        pixels = _normalise(batch)
        rows, cols = pixels.shape[-2] // PATCH_SIZE, pixels.shape[-1] // PATCH_SIZE
        patch_blocks.append(_patchify(pixels))
        grids.extend([(1, rows, cols)] * batch.shape[0])
    grid_thw = torch.tensor(grids, dtype=torch.int64, device=patch_blocks[0].device)
    return torch.cat(patch_blocks, dim=0), grid_thw
