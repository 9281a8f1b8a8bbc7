"""`dualvitok reconstruct --sdxl-decoder` on CPU: tiny tokenizer, tiny SDXL-shaped decoder folder, 1 step."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vision_tokenizer.data.image_io import load_image, psnr
from vision_tokenizer.job_args import reconstruct_parser
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.reconstruct import main, sdxl_token_size
from vision_tokenizer.sdxl import DECODER_SIZES, DualViTokSDXLDecoderPipeline
from vision_tokenizer.sdxl.conditioning import code_map_channels
from vision_tokenizer.sdxl.tiny import tiny_sdxl_components
from vision_tokenizer.utils.user_errors import UserError

from ..conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py")
ASTRONAUT = REPO_ROOT / "assets" / "examples" / "astronaut.jpg"  # 512x512
SEED = 3
# Only the 256x256 token size (512x512 output) fits: the fastest decoder size.
SMALLEST = ["--max-pixels", str(256 * 256)]


def _tokenizer() -> DualViTok:
    """The model the CLI builds from the config without --checkpoint (same seed)."""
    torch.manual_seed(SEED)
    return DualViTok.from_config(TINY).eval()


def _save_decoder(folder: Path, code_channels: int) -> Path:
    vae, unet, scheduler = tiny_sdxl_components(code_channels, seed=0)
    DualViTokSDXLDecoderPipeline(vae=vae, unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_decoder(tmp_path_factory.mktemp("sdxl") / "decoder", code_map_channels(_tokenizer()))


def _reconstruct(out: Path, decoder: Path, *extra: str) -> int:
    return main([str(ASTRONAUT), "--config", TINY, "--out", str(out), "--device", "cpu",
                 "--seed", str(SEED), "--sdxl-decoder", str(decoder), "--sdxl-steps", "1", *extra])


@pytest.fixture(scope="module")
def upsampled(decoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdxl_up")
    assert _reconstruct(out, decoder_dir, *SMALLEST, "--sdxl-upsample", "--sdxl-guidance", "3") == 0
    return out


def test_upsampled_output_is_the_pipeline_decode_of_the_saved_codes(upsampled: Path, decoder_dir: Path) -> None:
    metrics = json.loads((upsampled / "metrics.json").read_text())
    result = metrics["images"]["astronaut.jpg"]
    assert metrics["decoder"] == "sdxl"
    assert metrics["sdxl"] == {"decoder": str(decoder_dir), "steps": 1, "guidance": 3.0, "upsample": True, "seed": SEED}
    assert result["size"] == [256, 256] and result["output_size"] == [512, 512]
    recon = Image.open(upsampled / "astronaut.jpg.recon.png")
    assert recon.size == (512, 512)

    codes = json.loads((upsampled / "astronaut.jpg.codes.json").read_text())
    assert np.array(codes["pixel_indices"]).shape == (16, 16)  # 256 / 16
    pipe = DualViTokSDXLDecoderPipeline.from_pretrained(decoder_dir, dualvitok=_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        vq_indices=(torch.tensor([codes["semantic_indices"]]), torch.tensor([codes["pixel_indices"]])),
        height=512, width=512, num_inference_steps=1, guidance_scale=3.0,
        generator=[torch.Generator().manual_seed(SEED)],
    ).images[0]
    np.testing.assert_array_equal(np.asarray(recon), np.asarray(expected))

    # The 512x512 photo is its own reference at the 512x512 output size.
    assert result["psnr"] == pytest.approx(psnr(load_image(ASTRONAUT), recon), abs=1e-9)


def test_without_upsample_the_output_is_resized_back_to_the_token_size(
    upsampled: Path, decoder_dir: Path, tmp_path: Path
) -> None:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert _reconstruct(tmp_path, decoder_dir, *SMALLEST, "--sdxl-guidance", "3") == 0
    result = json.loads((tmp_path / "metrics.json").read_text())["images"]["astronaut.jpg"]
    recon = Image.open(tmp_path / "astronaut.jpg.recon.png")
    assert recon.size == (256, 256) and result["output_size"] == [256, 256]
    big = Image.open(upsampled / "astronaut.jpg.recon.png")
    np.testing.assert_array_equal(np.asarray(recon), np.asarray(big.resize((256, 256), Image.Resampling.BICUBIC)))
    reference = load_image(ASTRONAUT).resize((256, 256), Image.Resampling.LANCZOS)
    assert result["psnr"] == pytest.approx(psnr(reference, recon), abs=1e-9)
    assert "256x256 -> 256x256" in stdout.getvalue()


@pytest.mark.parametrize(
    ("image_size", "limits", "expected"),
    [
        ((300, 451), {}, (384, 576)),  # 3:2 landscape -> decoder 768x1152
        ((1000, 250), {}, (1024, 256)),  # 4:1 portrait -> decoder 2048x512
        ((100, 100), {}, (256, 256)),  # square, smaller than 512: no upscaling to 512x512 tokens
        ((600, 600), {}, (512, 512)),
        ((600, 600), {"max_pixels": 256 * 256}, (256, 256)),
        ((300, 451), {"max_pixels": 256 * 256}, (256, 256)),  # the only size left
    ],
)
def test_token_size_is_half_a_decoder_size(image_size, limits, expected) -> None:
    height, width = sdxl_token_size(*image_size, **limits)
    assert (height, width) == expected
    assert (2 * width, 2 * height) in DECODER_SIZES


def test_no_token_size_within_the_limits_lists_the_sizes() -> None:
    with pytest.raises(ValueError, match="--min-pixels 400000") as info:
        sdxl_token_size(512, 512, min_pixels=400_000)
    for width, height in DECODER_SIZES:
        assert f"{height // 2}x{width // 2}" in str(info.value)


def test_help_lists_the_token_sizes_of_the_decoder(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        reconstruct_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--sdxl-decoder", "--sdxl-steps", "--sdxl-guidance", "--sdxl-upsample"):
        assert flag in text
    assert "input resized to the output size" in text
    listed = re.search(r"token sizes HxW: ([\dx, ]+)\)", text).group(1).split(", ")
    assert listed == [f"{height // 2}x{width // 2}" for width, height in DECODER_SIZES]


@pytest.mark.parametrize("flags", [["--sdxl-steps", "2"], ["--sdxl-guidance", "1.5"], ["--sdxl-upsample"]])
def test_sdxl_flags_need_the_decoder(tmp_path: Path, flags: list[str]) -> None:
    with pytest.raises(UserError, match=f"{flags[0]} only apply with --sdxl-decoder"):
        main([str(ASTRONAUT), "--config", TINY, "--out", str(tmp_path), *flags])


def test_bad_decoders_are_clear_errors(tmp_path: Path, decoder_dir: Path) -> None:
    with pytest.raises(UserError, match="no SDXL decoder token size fits --max-pixels 1000"):
        _reconstruct(tmp_path / "out", decoder_dir, "--max-pixels", "1000")
    missing = tmp_path / "missing"
    with pytest.raises(UserError, match=re.escape(f"{missing} (no such folder)")):
        _reconstruct(tmp_path / "out", missing)
    released_width = _save_decoder(tmp_path / "wide", 64)  # 4 + 64 input channels, the tiny tokenizer has 16
    with pytest.raises(UserError, match="in_channels is 68"):
        _reconstruct(tmp_path / "out", released_width)
