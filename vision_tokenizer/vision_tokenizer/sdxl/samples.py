"""Sample grids during training: tokenizer input next to the decoder's 2x rendering of its codes."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image

from vision_tokenizer.data.image_io import tensor_to_image

from .pipeline import DualViTokSDXLDecoderPipeline

__all__ = ["render_sample_grid"]

_ROW_HEIGHT = 256


def _fit_height(image: Image.Image, height: int) -> Image.Image:
    return image.resize((max(1, round(image.width * height / image.height)), height), Image.Resampling.BICUBIC)


def render_sample_grid(
    pipeline: DualViTokSDXLDecoderPipeline,
    sources: Sequence[torch.Tensor],
    path: str | os.PathLike,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
) -> None:
    """Write a PNG with one row per source image [3, h, w] in [-1, 1]: input | decoded (2h x 2w).

    Each image uses a CPU generator seeded with `seed`, so grids of different steps are comparable.
    """
    rows = []
    for source in sources:
        decoded = pipeline(
            images=source[None],
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed),
            output_type="pil",
        ).images[0]
        rows.append([_fit_height(tensor_to_image(source), _ROW_HEIGHT), _fit_height(decoded, _ROW_HEIGHT)])
    width = max(sum(tile.width for tile in row) for row in rows)
    grid = Image.new("RGB", (width, _ROW_HEIGHT * len(rows)), "white")
    for number, row in enumerate(rows):
        left = 0
        for tile in row:
            grid.paste(tile, (left, number * _ROW_HEIGHT))
            left += tile.width
    grid.save(path)
