"""Input images at inference: understanding (any resolution) and editing (padded to an anchor).

Editing inputs are fitted into the aspect-ratio anchor closest to their shape: Lanczos
contain-resize, centred on a white canvas of the anchor size (SPEC-mllm C6, `is_inference=True`).
The edited output has the anchor's aspect ratio, so `unpad_to_original` cuts the same margins
(scaled to the output size, which is 2x for the SDXL decoder) and resizes back to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from vision_tokenizer.data.image_io import image_to_tensor
from vision_tokenizer.data.transforms import AspectRatioCrop

from illume.vocab import RATIOS

__all__ = ["PaddedImage", "pad_to_anchor", "unpad_to_original", "understanding_tensor"]

WHITE = (255, 255, 255)


@dataclass(frozen=True)
class PaddedImage:
    """An image placed on an anchor canvas: `box` (left, top, right, bottom) of the content in it."""

    image: Image.Image
    anchor: tuple[int, int]  # (H, W)
    box: tuple[int, int, int, int]
    original_size: tuple[int, int]  # (W, H), PIL order


def pad_to_anchor(
    image: Image.Image, anchors: Sequence[tuple[int, int]] = RATIOS, anchor: tuple[int, int] | None = None
) -> PaddedImage:
    """Contain-resize `image` into `anchor` (default: the closest of `anchors`) with white padding."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if anchor is None:
        anchor = AspectRatioCrop(anchors).match(height, width).anchor
    anchor_h, anchor_w = anchor
    scale = min(anchor_w / width, anchor_h / height)
    new_w = min(anchor_w, max(1, round(width * scale)))
    new_h = min(anchor_h, max(1, round(height * scale)))
    resized = image if (new_w, new_h) == (width, height) else image.resize((new_w, new_h), Image.LANCZOS)
    left, top = (anchor_w - new_w) // 2, (anchor_h - new_h) // 2
    canvas = Image.new("RGB", (anchor_w, anchor_h), WHITE)
    canvas.paste(resized, (left, top))
    return PaddedImage(canvas, (anchor_h, anchor_w), (left, top, left + new_w, top + new_h), (width, height))


def unpad_to_original(output: Image.Image, padded: PaddedImage) -> Image.Image:
    """Cut the padding margins out of `output` (any multiple of the anchor size) and restore the input size."""
    anchor_h, anchor_w = padded.anchor
    sx, sy = output.width / anchor_w, output.height / anchor_h
    left, top, right, bottom = padded.box
    content = output.crop((round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)))
    if content.size == padded.original_size:
        return content
    return content.resize(padded.original_size, Image.LANCZOS)


def understanding_tensor(image: Image.Image, min_pixels: int, max_pixels: int) -> torch.Tensor:
    """`[1, 3, H, W]` in [-1, 1]: smart resize to multiples of 16 within the tower's pixel budget."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image_to_tensor(image, min_pixels=min_pixels, max_pixels=max_pixels)
