"""Tokenizer demo: reconstruction logic in-process, and the real page in headless Chromium."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vision_tokenizer.app import TokenizerDemo, codes_text, resize_short_side
from vision_tokenizer.data.image_io import ImageLoadError
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.models.vit_input import vit_target_size
from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline

from tests.browser import ARTIFACTS_DIR, browser_page, running_app
from tests.illume import tiny_models

tiny_dualvitok_dir = tiny_models.tiny_dualvitok_dir  # shared session fixture
tiny_sdxl_dir = tiny_models.tiny_sdxl_dir  # shared session fixture


def _photo(path: Path, width: int, height: int) -> Path:
    """A smooth colour gradient (so the codes are not all equal)."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([255 * x / width, 255 * y / height, 128 + 0 * x], axis=-1).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.fixture(scope="module")
def demo(tiny_dualvitok_dir: Path, tiny_sdxl_dir: Path) -> TokenizerDemo:
    model = DualViTok.from_pretrained(tiny_dualvitok_dir)
    decoder = DualViTokSDXLDecoderPipeline.from_pretrained(tiny_sdxl_dir, dualvitok=model)
    decoder.set_progress_bar_config(disable=True)
    return TokenizerDemo(model, decoder, max_upload_pixels=1000 * 1000)


def test_reconstruction_grids_and_both_decoders(demo: TokenizerDemo, tmp_path: Path) -> None:
    result = demo.reconstruct(
        _photo(tmp_path / "a.png", 320, 208), short_side=256, use_sdxl=True, sdxl_steps=1
    )
    # 208x320 is below the 256 short side (no upscale) and already a multiple of 16: tokenized as is.
    assert result.tokenized.size == (320, 208) and result.dualvitok.size == (320, 208)
    assert result.pixel_codes.shape == (208 // 16, 320 // 16)
    vit_h, vit_w = vit_target_size(208, 320)
    assert result.semantic_codes.shape == (vit_h // 28, vit_w // 28)
    # SDXL renders at twice the tokenizer size, snapped to its closest trained size (W, H) = (1152, 768).
    assert result.sdxl.size == (1152, 768)
    with torch.no_grad():
        again = demo.reconstruct(tmp_path / "a.png", short_side=256)
    assert np.array_equal(again.pixel_codes, result.pixel_codes) and again.sdxl is None
    assert codes_text(result.semantic_codes).count("\n") == result.semantic_codes.shape[0] - 1


def test_short_side_resize_rules() -> None:
    image = Image.new("RGB", (600, 400))
    assert resize_short_side(image, 256, False).size == (384, 256)
    assert resize_short_side(image, 512, False).size == (600, 400)
    assert resize_short_side(image, 512, True).size == (768, 512)
    assert resize_short_side(image, None, True).size == (600, 400)


def test_oversized_upload_is_refused_before_decoding(demo: TokenizerDemo, tmp_path: Path) -> None:
    big = _photo(tmp_path / "big.png", 1200, 900)
    with pytest.raises(ImageLoadError, match="exceeds the limit of 1000000 pixels"):
        demo.reconstruct(big)


def test_sdxl_without_decoder_is_a_clear_error(demo: TokenizerDemo, tmp_path: Path) -> None:
    bare = TokenizerDemo(demo.model)
    with pytest.raises(ValueError, match="--sdxl-decoder"):
        bare.reconstruct(_photo(tmp_path / "a.png", 64, 64), use_sdxl=True)


@pytest.mark.slow
def test_page_in_headless_chromium(tiny_dualvitok_dir: Path, tmp_path: Path) -> None:
    photo = _photo(tmp_path / "photo.png", 320, 208)
    args = ["--config", str(tiny_dualvitok_dir), "--device", "cpu"]
    with running_app("vision_tokenizer.app", args, tmp_path / "app.log") as url, browser_page(url) as page:
        page.locator("#input-image input[type=file]").set_input_files(str(photo))
        page.locator("#input-image img").first.wait_for(timeout=30_000)
        page.locator("#reconstruct").click()
        page.locator("#dualvitok-output img").first.wait_for(timeout=120_000)
        page.get_by_text("pixel codes (level 1): 13x20").wait_for(timeout=30_000)
        page.locator("#semantic-codes img").first.wait_for(timeout=10_000)
        ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS_DIR / "tokenizer_demo.png"), full_page=True)
