"""Image transforms of the tokenizer pipelines: training augments, aspect-ratio anchors.

Every transform maps a PIL RGB image to a `[1, 3, H, W]` float tensor in [-1, 1] through the
official MoVQ image processor (`image_io.image_to_tensor`). Random choices (horizontal flips)
draw from a `random.Random` passed in by the caller, so a data position always produces the
same sample and an interrupted training run resumes bit-exactly.

`RATIOS` are the 11 (H, W) generation anchors of ILLUME+ (SPEC-mllm C6). The MLLM package owns
its own copy in `illume.vocab`; it is repeated here because `vision_tokenizer` must not import
`illume`, and codebook inference needs the anchors.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from vision_tokenizer.data.image_io import image_to_tensor

__all__ = [
    "RATIOS",
    "DEFAULT_MIN_PIXELS",
    "DEFAULT_MAX_PIXELS",
    "AnchorMatch",
    "AspectRatioCrop",
    "ImageTransform",
    "build_transform",
    "resize_short_side",
    "center_crop",
    "cover_resize_center_crop",
    "TRANSFORM_TYPES",
]

RATIOS: tuple[tuple[int, int], ...] = (
    (512, 512),
    (384, 512),
    (512, 384),
    (384, 768),
    (768, 384),
    (384, 576),
    (576, 384),
    (320, 960),
    (960, 320),
    (256, 1024),
    (1024, 256),
)
DEFAULT_MIN_PIXELS = 32 * 32
DEFAULT_MAX_PIXELS = 1024 * 1024

ImageTransform = Callable[[Image.Image, random.Random], torch.Tensor]


def resize_short_side(img: Image.Image, size: int, resample: int = Image.BILINEAR) -> Image.Image:
    """Scale so the shorter side equals `size` (long side truncated, like torchvision's Resize(int))."""
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    return img.resize((new_w, new_h), resample)


def center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Central `height x width` window (torchvision's rounding of the offsets)."""
    w, h = img.size
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def cover_resize_center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Lanczos-resize so the image covers `height x width`, then take the centre window."""
    w, h = img.size
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.LANCZOS)
    return center_crop(img, height, width)


@dataclass(frozen=True)
class AnchorMatch:
    """The anchor picked for an image and how much of the cover-resized image a crop discards."""

    anchor: tuple[int, int]  # (H, W)
    crop_fraction: float

    def exceeds(self, threshold: float) -> bool:
        return self.crop_fraction > threshold


class AspectRatioCrop:
    """Map an image to the anchor (H, W) with the closest aspect ratio and centre-crop it there.

    Ties in aspect ratio go to the anchor closest in size. `crop_fraction` is the share of the
    cover-resized image that the crop removes: 1 - H_a·W_a / (h_t·w_t).
    """

    def __init__(
        self, base_sizes: Sequence[tuple[int, int]] = RATIOS, crop_percent_thresh: float = 0.2
    ) -> None:
        if not base_sizes:
            raise ValueError("AspectRatioCrop needs at least one anchor size")
        self.base_sizes = [(int(h), int(w)) for h, w in base_sizes]
        self.crop_percent_thresh = crop_percent_thresh

    def match(self, height: int, width: int) -> AnchorMatch:
        ratio = width / height

        def key(anchor: tuple[int, int]) -> tuple[float, int]:
            ah, aw = anchor
            return abs(ratio - aw / ah), (height - ah) ** 2 + (width - aw) ** 2

        ah, aw = min(self.base_sizes, key=key)
        scale = max(aw / width, ah / height)
        cover_w, cover_h = max(aw, round(width * scale)), max(ah, round(height * scale))
        return AnchorMatch((ah, aw), 1.0 - (ah * aw) / (cover_h * cover_w))

    def __call__(self, img: Image.Image) -> tuple[Image.Image, AnchorMatch]:
        found = self.match(img.height, img.width)
        return cover_resize_center_crop(img, *found.anchor), found


def _processor(augment: Mapping[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    min_pixels = int(augment.get("min_pixels", DEFAULT_MIN_PIXELS))
    max_pixels = int(augment.get("max_pixels", DEFAULT_MAX_PIXELS))
    return lambda img: image_to_tensor(img, min_pixels=min_pixels, max_pixels=max_pixels)


def _maybe_flip(img: Image.Image, rng: random.Random) -> Image.Image:
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def _fix_train(resolution: int, augment: Mapping[str, Any]) -> ImageTransform:
    process = _processor(augment)

    def transform(img: Image.Image, rng: random.Random) -> torch.Tensor:
        img = center_crop(resize_short_side(img, resolution), resolution, resolution)
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.BILINEAR)
        return process(_maybe_flip(img, rng))

    return transform


def _anyres_train(resolution: int, augment: Mapping[str, Any]) -> ImageTransform:
    process = _processor(augment)
    return lambda img, rng: process(_maybe_flip(img, rng))


def _fix_val(resolution: int, augment: Mapping[str, Any]) -> ImageTransform:
    process = _processor(augment)
    return lambda img, rng: process(center_crop(resize_short_side(img, resolution), resolution, resolution))


def _anyres_inference(resolution: int, augment: Mapping[str, Any]) -> ImageTransform:
    process = _processor(augment)
    return lambda img, rng: process(img)


def _fix_inference(resolution: int, augment: Mapping[str, Any]) -> ImageTransform:
    process = _processor(augment)
    size = augment.get("size", (resolution, resolution))
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return lambda img, rng: process(cover_resize_center_crop(img, height, width))


TRANSFORM_TYPES: dict[str, Callable[[int, Mapping[str, Any]], ImageTransform]] = {
    "dualvitok_fix_resolution_train": _fix_train,
    "dualvitok_anyres_resolution_train": _anyres_train,
    "dualvitok_fix_resolution_val": _fix_val,
    "dualvitok_anyres_inference": _anyres_inference,
    "dualvitok_fix_resolution_inference": _fix_inference,
}


def build_transform(augment: Mapping[str, Any], resolution: int) -> ImageTransform:
    """Build the transform named by `augment['type']` (the official augment names)."""
    kind = augment.get("type")
    if kind not in TRANSFORM_TYPES:
        raise ValueError(f"augment type {kind!r} is not supported (choices: {sorted(TRANSFORM_TYPES)})")
    return TRANSFORM_TYPES[kind](int(resolution), augment)
