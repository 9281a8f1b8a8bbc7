"""Safe image loading, the official smart resize and the tensor conversions of `data.image_io`."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from skimage.metrics import peak_signal_noise_ratio
from vision_tokenizer.data.image_io import (
    ImageLoadError,
    image_to_tensor,
    load_image,
    psnr,
    smart_resize,
    tensor_to_image,
    tensor_to_uint8,
)

from ..conftest import REPO_ROOT

PHOTO = REPO_ROOT / "assets" / "examples" / "astronaut.jpg"


def _rgb_noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _reference_float(u8: np.ndarray) -> torch.Tensor:
    """The float formula stated in golden/README §C(iii), applied independently."""
    unit = (u8.astype(np.float64) * (1 / 255)).astype(np.float32)
    return torch.from_numpy(((unit - np.float32(0.5)) / np.float32(0.5)).transpose(2, 0, 1).copy())[None]


# ---------------------------------------------------------------------------------------- bad input


def _expect_error(path: Path, reason: str, **kwargs) -> ImageLoadError:
    with pytest.raises(ImageLoadError, match=reason) as info:
        load_image(path, **kwargs)
    assert str(path) in str(info.value) and info.value.path == str(path)
    return info.value


def test_missing_file_and_directory(tmp_path: Path) -> None:
    _expect_error(tmp_path / "nope.png", "file not found")
    _expect_error(tmp_path, "not a regular file")


@pytest.mark.parametrize("content", [b"", b"hello, I am text\n" * 20, b"\x89PNG\r\n\x1a\n"])
def test_non_images_are_rejected(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    _expect_error(path, "not an image|corrupt")


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = PHOTO.read_bytes()
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    _expect_error(path, "corrupt or truncated")


def test_truncated_png(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_rgb_noise(64, 64)).save(good)
    data = good.read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) * 2 // 3])
    _expect_error(path, "corrupt or truncated")


def test_corrupted_png_payload(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(_rgb_noise(64, 64)).save(good)
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(16)  # breaks the IDAT checksum / deflate stream
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    _expect_error(path, "corrupt or truncated")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def test_png_whose_pixel_data_ends_early_is_an_error_not_black_rows(tmp_path: Path) -> None:
    """Valid chunks and checksums, but a complete deflate stream of only half the rows."""
    height, width = 64, 48
    rows = b"".join(b"\x00" + _rgb_noise(1, width, seed=row).tobytes() for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    whole, short = tmp_path / "whole.png", tmp_path / "short.png"
    for path, data in ((whole, rows), (short, rows[: len(rows) // 2])):
        chunks = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(data)) + _png_chunk(b"IEND", b"")
        path.write_bytes(signature + chunks)
    assert load_image(whole).size == (width, height)  # the hand-built file itself is valid
    _expect_error(short, "pixel data ends early")


@pytest.mark.parametrize(("peak", "scale"), [(255, 1), (60000, 257)])
def test_32_bit_integer_tiff_keeps_its_values(tmp_path: Path, peak: int, scale: int) -> None:
    values = np.random.default_rng(1).integers(0, peak + 1, (40, 36)).astype(np.int32)
    values[0, 0] = peak
    path = tmp_path / "wide.tif"
    Image.fromarray(values, mode="I").save(path)
    assert Image.open(path).mode == "I"
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out[..., 1], np.rint(values / scale).astype(np.uint8))


def test_32_bit_integers_beyond_16_bits_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    Image.fromarray(np.full((40, 40), 1 << 20, dtype=np.int32), mode="I").save(path)
    _expect_error(path, "32-bit integer image")


def test_too_small_images(tmp_path: Path) -> None:
    path = tmp_path / "tiny.png"
    Image.fromarray(_rgb_noise(20, 50)).save(path)
    _expect_error(path, "50x20.*at least 32")
    assert load_image(path, min_side=16).size == (50, 20)


def test_pixel_limit_is_checked_before_decoding(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.fromarray(_rgb_noise(64, 64)).save(path)
    _expect_error(path, "64x64 pixels exceeds the limit of 4000", max_pixels=4000)
    assert load_image(path, max_pixels=4096).size == (64, 64)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.mark.parametrize("side", [9000, 50000])  # above our 8192² default; above Pillow's own limit
def test_decompression_bomb_header(tmp_path: Path, side: int) -> None:
    """A 100-byte PNG that claims side×side RGB pixels (up to 7.5 GB decoded) is refused without decoding."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    _expect_error(path, "decompression bomb")


# ----------------------------------------------------------------------------------- pixel formats


def test_rgb_jpeg_round_trip() -> None:
    img = load_image(PHOTO)
    assert img.mode == "RGB" and img.size == (512, 512)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = _rgb_noise(40, 48)[..., 0]
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    out = np.asarray(load_image(path))
    assert out.shape == (40, 48, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


def test_rgba_drops_alpha_and_keeps_the_colour_underneath(tmp_path: Path) -> None:
    rgb = _rgb_noise(40, 40)
    alpha = np.zeros((40, 40, 1), dtype=np.uint8)
    alpha[:20] = 255  # top half opaque, bottom half fully transparent
    path = tmp_path / "rgba.png"
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA").save(path)
    np.testing.assert_array_equal(np.asarray(load_image(path)), rgb)


def test_gray_with_alpha(tmp_path: Path) -> None:
    gray = _rgb_noise(36, 36)[..., :2]
    path = tmp_path / "la.png"
    Image.fromarray(gray, mode="LA").save(path)
    out = np.asarray(load_image(path))
    np.testing.assert_array_equal(out, np.repeat(gray[..., :1], 3, axis=2))


def test_palette_images(tmp_path: Path) -> None:
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    index = np.random.default_rng(1).integers(0, 4, (33, 40), dtype=np.uint8)
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette.flatten().tolist())
    plain, transparent = tmp_path / "p.png", tmp_path / "p_alpha.png"
    img.save(plain)
    img.save(transparent, transparency=3)
    for path in (plain, transparent):
        np.testing.assert_array_equal(np.asarray(load_image(path)), palette[index])


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    cmyk = Image.new("CMYK", (48, 40), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(path, quality=100)
    out = np.asarray(load_image(path)).astype(int)
    assert out.shape == (40, 48, 3)
    assert np.abs(out - np.array([255, 0, 0])).max() <= 3


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 128]], dtype=np.uint16).repeat(40, axis=0).repeat(10, axis=1)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    out = np.asarray(load_image(path))
    expected = np.array([0, 100, 255, 0], dtype=np.uint8).repeat(10)  # 128/257 rounds to 0
    for channel in range(3):
        np.testing.assert_array_equal(out[0, :, channel], expected)


def test_float_images_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "float.tif"
    Image.fromarray(np.random.default_rng(0).random((40, 40), dtype=np.float32)).save(path)
    _expect_error(path, "floating-point")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = _rgb_noise(40, 64)  # 64 wide, 40 tall as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "rotated.png"
    Image.fromarray(stored).save(path, exif=exif)
    out = np.asarray(load_image(path))
    assert out.shape == (64, 40, 3)
    np.testing.assert_array_equal(out, np.rot90(stored, k=-1))


# ------------------------------------------------------------------------------------ smart_resize


@pytest.mark.parametrize(
    ("size", "limits", "expected"),
    [
        ((493, 493), (16, 32 * 32, 768 * 768), (496, 496)),  # golden understanding sample
        ((256, 256), (16, 32 * 32, 1024 * 1024), (256, 256)),
        ((300, 451), (16, 32 * 32, 1024 * 1024), (304, 448)),  # 18.75→19, 28.19→28
        ((24, 40), (16, 32 * 32, 1024 * 1024), (32, 32)),  # 1.5→2 and 2.5→2: round half to even
        # too large: β = √(2000·1000 / 512²) = 2.7621; 2000/β/16 = 45.25 → 720, 1000/β/16 = 22.63 → 352
        ((2000, 1000), (16, 32 * 32, 512 * 512), (720, 352)),
        # too small: rounds to 16×16 < 32²; β = √(1024/200) = 2.2627; 10β/16 = 1.41 → 32, 20β/16 = 2.83 → 48
        ((10, 20), (16, 32 * 32, 1024 * 1024), (32, 48)),
        ((3, 900), (16, 32 * 32, 1024 * 1024), (16, 896)),  # each side at least one factor
        # factor 28: 25.75→26, 25.71→26 gives 728² > 448²; β = √(721·720/448²) = 1.6083;
        # 721/β/28 = 16.01 → 448, 720/β/28 = 15.99 → 420
        ((721, 720), (28, 56 * 56, 448 * 448), (448, 420)),
    ],
)
def test_smart_resize_hand_computed(size, limits, expected) -> None:
    assert smart_resize(*size, *limits) == expected


def test_smart_resize_results_respect_the_grid_and_budget() -> None:
    rng = np.random.default_rng(0)
    for height, width in rng.integers(16, 3000, (200, 2)):
        h, w = smart_resize(int(height), int(width), 16, 32 * 32, 512 * 512)
        assert h % 16 == 0 and w % 16 == 0
        assert 32 * 32 <= h * w <= 512 * 512


def test_smart_resize_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)


# ------------------------------------------------------------------------------ tensor conversions


def test_golden_understanding_image_float_formula(golden: Path) -> None:
    u8 = load_file(str(golden / "mllm_tiny_train_understanding.safetensors"))["images.0.uint8_hwc"].numpy()
    assert u8.shape == (496, 496, 3)
    tensor = image_to_tensor(Image.fromarray(u8), min_pixels=32 * 32, max_pixels=768 * 768)
    assert tensor.dtype == torch.float32 and tensor.shape == (1, 3, 496, 496)
    assert torch.equal(tensor, _reference_float(u8))


def test_image_to_tensor_resizes_with_pil_bicubic_and_keeps_orientation() -> None:
    width, height = 100, 50
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8)[None, :, None], (height, 1, 3))
    img = Image.fromarray(ramp)
    tensor = image_to_tensor(img, 32 * 32, 1024 * 1024)
    assert tensor.shape == (1, 3, 48, 96)  # 50→48, 100→96 (H first)
    expected = np.asarray(img.resize((96, 48), Image.Resampling.BICUBIC))
    assert torch.equal(tensor, _reference_float(expected))
    assert tensor[0, 0, 0, 0] < tensor[0, 0, 0, -1]  # dark on the left, bright on the right


def test_image_to_tensor_constant_colour_values() -> None:
    img = Image.new("RGB", (64, 48), (255, 0, 51))
    tensor = image_to_tensor(img)
    assert tensor.shape == (1, 3, 48, 64)
    torch.testing.assert_close(
        tensor[0, :, 0, 0], torch.tensor([1.0, -1.0, 51 / 127.5 - 1]), atol=1e-7, rtol=0
    )


def test_image_to_tensor_needs_rgb() -> None:
    with pytest.raises(ValueError, match="mode 'L'"):
        image_to_tensor(Image.new("L", (32, 32)))


def test_tensor_to_image_mapping() -> None:
    values = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = np.asarray(tensor_to_image(values))
    # clamp(127.5·x + 128) truncated: -127→0, 0.5→0, 128, 191.75→191, 255.5→255, 383→255
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 128, 191, 255, 255])


def test_uint8_round_trip_is_exact() -> None:
    u8 = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    back = np.asarray(tensor_to_image(image_to_tensor(Image.fromarray(u8), 16 * 16, 16 * 16)))
    np.testing.assert_array_equal(back, u8)


def test_tensor_to_image_rejects_batches() -> None:
    with pytest.raises(ValueError, match="batch of 2"):
        tensor_to_image(torch.zeros(2, 3, 8, 8))


# ------------------------------------------------------------------------------------------- psnr


def test_psnr_matches_skimage() -> None:
    a, b = _rgb_noise(32, 48, seed=1), _rgb_noise(32, 48, seed=2)
    assert psnr(a, b) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), rel=1e-12)
    assert psnr(Image.fromarray(a), Image.fromarray(b)) == psnr(a, b)


def test_psnr_hand_values() -> None:
    zeros = np.zeros((4, 4, 3), dtype=np.uint8)
    assert psnr(zeros, zeros + 1) == pytest.approx(10 * math.log10(255**2))  # MSE 1 → 48.13 dB
    assert psnr(zeros, zeros) == math.inf


def test_psnr_input_checks() -> None:
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        psnr(np.zeros((4, 4, 3)), np.zeros((4, 4, 3)))


def test_tensor_to_uint8_batches_with_the_official_mapping() -> None:
    images = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 2, 3).expand(2, 3, 2, 3)
    pixels = tensor_to_uint8(images)
    assert pixels.shape == (2, 2, 3, 3) and pixels.dtype == np.uint8
    # clamp(127.5 x + 128, 0, 255) truncated: -1 -> 0 (0.5), -0.5 -> 64 (64.25), 0 -> 128, ~1 -> 255
    assert pixels[0, :, :, 0].ravel().tolist() == [0, 64, 128, 255, 255, 255]
    with pytest.raises(ValueError, match="B, 3, H, W"):
        tensor_to_uint8(torch.zeros(3, 4, 4))
