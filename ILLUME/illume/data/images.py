"""Input-image preprocessing of the MLLM datasets: the `image_aspect_ratio` modes (SPEC-mllm C6).

Every mode ends in the official MoVQ image processor (`image_to_tensor`: smart resize to multiples
of 16 within the vision tower's pixel budget, [-1, 1] floats), so the tensors match what the
vision tower sees at inference. What differs is the geometry before it:

* `anyres_dualvitok`: none (understanding inputs keep their aspect ratio);
* `anyres_dualvitok_fix_anchors`: Lanczos cover-resize and centre crop to the closest of the 11
  aspect-ratio anchors (generation/editing inputs);
* `anyres_dualvitok_fix_centercrop` / `anyres_dualvitok_fix_resize`: a `base_resolution` square.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import ExifTags, Image
from vision_tokenizer.data.image_io import image_to_tensor, smart_resize
from vision_tokenizer.data.transforms import AspectRatioCrop, center_crop, resize_short_side

from illume.model.configuration_illume import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS
from illume.vocab import PIXEL_PATCH, RATIOS

__all__ = ["IMAGE_ASPECT_RATIO_MODES", "ImagePreprocessor"]

IMAGE_ASPECT_RATIO_MODES = (
    "anyres_dualvitok",
    "anyres_dualvitok_fix_anchors",
    "anyres_dualvitok_fix_centercrop",
    "anyres_dualvitok_fix_resize",
)
# EXIF orientations that swap width and height (transpose, 90° turns, transverse).
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


@dataclass(frozen=True)
class ImagePreprocessor:
    """RGB PIL image → `[1, 3, H, W]` in [-1, 1] for one `image_aspect_ratio` mode."""

    mode: str
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    base_resolution: int = 256

    def __post_init__(self) -> None:
        if self.mode not in IMAGE_ASPECT_RATIO_MODES:
            raise ValueError(
                f"image_aspect_ratio must be one of {IMAGE_ASPECT_RATIO_MODES}, got {self.mode!r}"
            )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.reshape(image))

    def reshape(self, image: Image.Image) -> Image.Image:
        """The mode's geometry step (crop / resize), before the pixel processor."""
        if self.mode == "anyres_dualvitok_fix_anchors":
            image, _ = AspectRatioCrop(RATIOS)(image)
        elif self.mode == "anyres_dualvitok_fix_centercrop":
            side = self.base_resolution
            image = center_crop(resize_short_side(image, side, Image.Resampling.BICUBIC), side, side)
        elif self.mode == "anyres_dualvitok_fix_resize":
            side = self.base_resolution
            image = image.resize((side, side), Image.Resampling.BICUBIC)
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        """The MoVQ pixel processor: smart resize within the tower's pixel budget, [-1, 1]."""
        return image_to_tensor(image, self.min_pixels, self.max_pixels)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the tensor produced for a `height x width` image, without touching pixels."""
        if self.mode == "anyres_dualvitok_fix_anchors":
            height, width = AspectRatioCrop(RATIOS).match(height, width).anchor
        elif self.mode != "anyres_dualvitok":
            height = width = self.base_resolution
        return smart_resize(height, width, PIXEL_PATCH, self.min_pixels, self.max_pixels)

    def input_size(self, path: Path) -> tuple[int, int]:
        """(H, W) of the tensor this mode makes of the image at `path`, read from the file header only
        (EXIF orientation included, as `load_image` applies it)."""
        with Image.open(path) as img:
            width, height = img.size
            if _header_orientation(img) in _TRANSPOSING_ORIENTATIONS:
                width, height = height, width
        return self.output_size(height, width)


def _header_orientation(img: Image.Image) -> int:
    """The EXIF orientation known without decoding: Pillow's PNG `getexif` decodes the whole file
    to look for an eXIf chunk after the pixels, so for PNG only a chunk before them counts."""
    if img.format != "PNG":
        return img.getexif().get(ExifTags.Base.Orientation, 1)
    exif = Image.Exif()
    if "exif" in img.info:
        exif.load(img.info["exif"])
    return exif.get(ExifTags.Base.Orientation, 1)
