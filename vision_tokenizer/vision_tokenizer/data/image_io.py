"""Image files in and out of DualViTok: safe loading, the official smart resize, tensor conversion.

This is the one place that turns user files into model input. Loading is defensive because
images come from the wild: every failure (missing, not an image, corrupt, truncated, too large
to decode safely, too small to tokenize, an unsupported pixel format) raises `ImageLoadError`
naming the file, so batch tools can report it and carry on with the other images.

Colour handling, decided once here:
* EXIF orientation is applied, so the tensor shows the image the way viewers display it.
* Transparency is **dropped** (the RGB values under the alpha channel are kept), exactly as the
  official pipeline's `convert('RGB')` does; compositing on a background would change the pixels,
  hence the codes, of every transparent training and evaluation image.
* Grayscale, palette, CMYK, YCbCr and LAB images are converted to RGB by Pillow; 16-bit integer
  images are scaled to 8 bits (value / 257, rounded) instead of being clipped at 255. 32-bit
  integer images (TIFF) carry no bit depth of their values: values within 0..255 are taken as
  8-bit, within 0..65535 as 16-bit, anything else is refused.
* A PNG whose pixel data ends early (a complete but short compressed stream, which Pillow would
  fill with black) is refused as truncated.
* Floating-point images have no defined display range and are rejected.

Numerics follow the official `MoVQImageProcessor`: `smart_resize` to multiples of 16 within a
pixel budget, PIL bicubic resize, then `((u8 / 255) - 0.5) / 0.5` in float32.
"""

from __future__ import annotations

import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from vision_tokenizer.utils.user_errors import UserError

__all__ = [
    "DEFAULT_MAX_SOURCE_PIXELS",
    "MIN_IMAGE_SIDE",
    "ImageLoadError",
    "load_image",
    "smart_resize",
    "image_to_tensor",
    "tensor_to_image",
    "tensor_to_uint8",
    "psnr",
]

# Largest source image decoded (pixels): 8192×8192. Bigger files are refused before decoding, which
# guards against decompression bombs (a few kB of PNG that expand to gigabytes).
DEFAULT_MAX_SOURCE_PIXELS = 8192 * 8192
# Smallest side accepted: smaller images carry too little content to tokenize meaningfully, and
# the semantic ViT works on 28-pixel cells.
MIN_IMAGE_SIDE = 32

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
# Everything Pillow may raise while parsing or decoding a damaged file.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)


class ImageLoadError(UserError, ValueError):
    """An image file could not be turned into an RGB picture; carries the path and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_image(
    path: str | os.PathLike,
    max_pixels: int | None = None,
    min_side: int = MIN_IMAGE_SIDE,
) -> Image.Image:
    """Open an image file as an 8-bit RGB PIL image with EXIF orientation applied.

    `max_pixels` bounds the *source* size (width × height, read from the header before any pixel
    is decoded; default `DEFAULT_MAX_SOURCE_PIXELS`); `min_side` is the smallest accepted side.
    Raises `ImageLoadError` for anything that is not a usable image.
    """
    path = Path(path)
    limit = DEFAULT_MAX_SOURCE_PIXELS if max_pixels is None else max_pixels
    if not path.exists():
        raise ImageLoadError(path, "file not found")
    if not path.is_file():
        raise ImageLoadError(path, "not a regular file")
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > limit:
                    raise ImageLoadError(
                        path,
                        f"{width}x{height} pixels exceeds the limit of {limit} pixels "
                        "(possible decompression bomb)",
                    )
                img.load()
                if img.format == "PNG":
                    _check_png_pixel_data(path)
                rgb = _to_rgb(path, ImageOps.exif_transpose(img), png=img.format == "PNG")
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, "not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as err:
        raise ImageLoadError(path, f"possible decompression bomb ({err})") from None
    except _DECODE_ERRORS as err:
        raise ImageLoadError(path, f"corrupt or truncated image ({type(err).__name__}: {err})") from None
    if min(rgb.size) < min_side:
        raise ImageLoadError(
            path, f"image is {rgb.width}x{rgb.height}; both sides must be at least {min_side} px"
        )
    return rgb


def _png_expected_bytes(header: bytes) -> int:
    """Length of the decompressed pixel data (filter byte + samples per row) that IHDR announces."""
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header[:13])
    bits = _PNG_CHANNELS.get(colour, 4) * depth
    if not interlace:
        return height * (1 + math.ceil(width * bits / 8))
    total = 0
    for x0, y0, dx, dy in _ADAM7:
        cols, rows = max(0, math.ceil((width - x0) / dx)), max(0, math.ceil((height - y0) / dy))
        if cols and rows:
            total += rows * (1 + math.ceil(cols * bits / 8))
    return total


def _check_png_pixel_data(path: Path) -> None:
    """Refuse a PNG whose compressed pixel data decodes to fewer bytes than its size needs."""
    data = path.read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        return
    position, header, inflater, produced = len(_PNG_SIGNATURE), b"", zlib.decompressobj(), 0
    while position + 8 <= len(data):
        (length,), kind = struct.unpack(">I", data[position : position + 4]), data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            produced += len(inflater.decompress(body))
        position += 12 + length
    if len(header) < 13:
        return
    expected = _png_expected_bytes(header)
    if produced < expected:
        raise ImageLoadError(
            path, f"truncated image: its pixel data ends early ({produced} of {expected} bytes)"
        )


def _integer_to_uint8(path: Path, img: Image.Image, png: bool) -> Image.Image:
    """16-bit modes, and 32-bit integers whose values fit 8 or 16 bits, as 8-bit grey."""
    wide = np.asarray(img).astype(np.float64)
    low, high = (float(wide.min()), float(wide.max())) if wide.size else (0.0, 0.0)
    if img.mode in _SIXTEEN_BIT_MODES or png:  # PNG stores at most 16 bits per sample
        scale = 257.0
    elif low >= 0 and high <= 255:
        scale = 1.0
    elif low >= 0 and high <= 65535:
        scale = 257.0
    else:
        raise ImageLoadError(
            path, f"32-bit integer image with values {low:.0f}..{high:.0f}: only 0..255 (8-bit) or "
            "0..65535 (16-bit) values have a defined display range",
        )
    eight = np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8)
    return Image.fromarray(eight).convert("RGB")


def _to_rgb(path: Path, img: Image.Image, png: bool = False) -> Image.Image:
    """Convert any supported mode to 8-bit RGB (alpha dropped, 16/32-bit integers scaled down)."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "I":
        return _integer_to_uint8(path, img, png)
    if img.mode == "F":
        raise ImageLoadError(path, "floating-point images are not supported (no defined value range)")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when converting transparent palettes straight to RGB
    return img.convert("RGB")


def smart_resize(
    height: int,
    width: int,
    factor: int = 16,
    min_pixels: int = 32 * 32,
    max_pixels: int = 1024 * 1024,
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within [min_pixels, max_pixels].

    Each side is rounded to the nearest multiple (Python's round, half to even, as the reference);
    if the area is then too large both sides are scaled by the same β and floored, if too small
    scaled and ceiled; no side drops below `factor`. The aspect ratio is kept as well as the grid
    allows.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if factor <= 0 or min_pixels > max_pixels:
        raise ValueError(
            f"invalid resize limits: factor={factor}, min_pixels={min_pixels}, max_pixels={max_pixels}"
        )
    new_h = max(factor, round(height / factor) * factor)
    new_w = max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / beta / factor) * factor)
        new_w = max(factor, math.floor(width / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * beta / factor) * factor
        new_w = math.ceil(width * beta / factor) * factor
    return new_h, new_w


def image_to_tensor(
    img: Image.Image,
    min_pixels: int = 32 * 32,
    max_pixels: int = 1024 * 1024,
    factor: int = 16,
) -> torch.Tensor:
    """RGB PIL image → float32 tensor [1, 3, H, W] in [-1, 1], H and W from `smart_resize`."""
    if img.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {img.mode!r}; open files with load_image()")
    height, width = smart_resize(img.height, img.width, factor, min_pixels, max_pixels)
    if (width, height) != img.size:
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    u8 = np.asarray(img, dtype=np.uint8)
    # Same float path as the reference: scale in float64, round to float32, then normalise.
    unit = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    normalised = (unit - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None]


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Model output [B, 3, H, W] in [-1, 1] → [B, H, W, 3] uint8 arrays.

    Uses the reference mapping clamp(127.5·x + 128, 0, 255) truncated to uint8, so saved
    reconstructions match the official ones byte for byte.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected shape [B, 3, H, W], got {list(images.shape)}")
    pixels = (images.detach().float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """Model output [1, 3, H, W] or [3, H, W] in [-1, 1] → RGB PIL image (see `tensor_to_uint8`)."""
    if tensor.dim() == 4 and tensor.shape[0] != 1:
        raise ValueError(f"expected a single image, got a batch of {tensor.shape[0]}")
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 4 or tensor.shape[1] != 3:
        raise ValueError(f"expected shape [3, H, W] or [1, 3, H, W], got {list(tensor.shape)}")
    return Image.fromarray(tensor_to_uint8(tensor)[0])


def psnr(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two 8-bit images of equal size (inf if identical)."""
    x, y = np.asarray(a), np.asarray(b)
    if x.dtype != np.uint8 or y.dtype != np.uint8:
        raise ValueError(f"psnr expects uint8 images, got {x.dtype} and {y.dtype}")
    if x.shape != y.shape:
        raise ValueError(f"psnr needs images of the same shape, got {x.shape} and {y.shape}")
    mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)
