"""The twelve output sizes the released SDXL decoder was trained on, and their time-id index.

The decoder's UNet receives the position of its output size in this list as the last of its six
SDXL "time ids", so the list order is part of the checkpoint. Sizes are (width, height), the order
the reference spells them in ("(W, H)"). Every decoder output is twice the tokenizer resolution:
the 11 MLLM anchors and 256x256 map onto this list exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["DECODER_SIZES", "resolution_index", "check_decoder_size", "nearest_decoder_size"]

DECODER_SIZES: tuple[tuple[int, int], ...] = (
    (1024, 1024),
    (768, 1024),
    (1024, 768),
    (512, 2048),
    (2048, 512),
    (640, 1920),
    (1920, 640),
    (768, 1536),
    (1536, 768),
    (768, 1152),
    (1152, 768),
    (512, 512),
)


def _allowed_text() -> str:
    return ", ".join(f"{h}x{w}" for w, h in DECODER_SIZES)


def resolution_index(height: int, width: int) -> int:
    """Index of (width, height) in `DECODER_SIZES`; a ValueError lists the allowed HxW sizes."""
    try:
        return DECODER_SIZES.index((int(width), int(height)))
    except ValueError:
        raise ValueError(
            f"the SDXL decoder renders only its 12 trained sizes; got height={height}, width={width}. "
            f"Allowed (height x width): {_allowed_text()}"
        ) from None


def check_decoder_size(height: int, width: int) -> None:
    """Raise the `resolution_index` error for a size outside the list, before any model runs."""
    resolution_index(height, width)


def nearest_decoder_size(
    height: int, width: int, sizes: Sequence[tuple[int, int]] = DECODER_SIZES
) -> tuple[int, int]:
    """The (width, height) in `sizes` whose aspect ratio is closest to the image's (log scale).

    Among sizes with that aspect ratio (1024x1024 and 512x512) the largest one the image covers
    without upscaling wins, else the smallest: upscaled training targets teach blur.
    """
    if not sizes:
        raise ValueError("nearest_decoder_size needs at least one candidate size")
    log_ratio = math.log(width / height)
    best = min(abs(math.log(w / h) - log_ratio) for w, h in sizes)
    same_ratio = sorted(
        (s for s in sizes if abs(math.log(s[0] / s[1]) - log_ratio) - best < 1e-9), key=lambda s: s[0] * s[1]
    )
    fitting = [s for s in same_ratio if s[0] <= width and s[1] <= height]
    return fitting[-1] if fitting else same_ratio[0]
