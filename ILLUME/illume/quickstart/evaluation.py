"""Image comparisons of the quick start: tokenizer reconstructions and PSNR against baselines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from vision_tokenizer.data.image_io import image_to_tensor, load_image, psnr, tensor_to_image
from vision_tokenizer.models.dualvitok import DualViTok

__all__ = ["photo_at", "reconstruct", "psnr_between", "noise_image", "psnr_summary"]


def photo_at(path: str | Path, side: int) -> Image.Image:
    """A square photo scaled to `side` pixels (Lanczos, as codebook inference scales it)."""
    image = load_image(path)
    return image if image.size == (side, side) else image.resize((side, side), Image.Resampling.LANCZOS)


@torch.no_grad()
def reconstruct(model: DualViTok, images: Sequence[Image.Image]) -> list[Image.Image]:
    """Encode every image to codes and decode them again (what the LLM's codes look like as pixels)."""
    model.eval()
    side = images[0].size[0]
    batch = torch.cat(
        [image_to_tensor(img, min_pixels=side * side, max_pixels=side * side) for img in images]
    )
    semantic, pixel = model.encode_code(batch)
    return [tensor_to_image(x) for x in model.decode_code(semantic, pixel)]


def psnr_between(a: Image.Image, b: Image.Image) -> float:
    """PSNR in dB of two RGB images of the same size."""
    return psnr(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def noise_image(side: int, seed: int) -> Image.Image:
    """Uniform RGB noise: the PSNR a picture reaches against a photo by chance alone."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def psnr_summary(outputs: Sequence[Image.Image], references: Sequence[Image.Image], seed: int) -> dict:
    """Mean PSNR of each output against its own reference, against the other references, and of noise.

    `matched` well above `other_photos` and `noise` means the outputs resemble their own photos,
    not just photos in general.
    """
    if len(outputs) != len(references) or len(outputs) < 2:
        raise ValueError(
            f"need >= 2 outputs with one reference each, got {len(outputs)} and {len(references)}"
        )
    table = np.array([[psnr_between(out, ref) for ref in references] for out in outputs])
    off_diagonal = table[~np.eye(len(outputs), dtype=bool)]
    side = references[0].size[0]
    noise = [psnr_between(noise_image(side, seed + i), ref) for i, ref in enumerate(references)]
    return {
        "matched": float(np.mean(np.diag(table))),
        "other_photos": float(np.mean(off_diagonal)),
        "noise": float(np.mean(noise)),
        "per_image": [float(v) for v in np.diag(table)],
    }
