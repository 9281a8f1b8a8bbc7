"""The DualViTok decode fast path against the golden reconstructions (fp32) and its own fp32 output (bf16).

Cases are the golden `dualvitok_tiny_io_*` files named in `dualvitok_summary.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.models.fast_decode import FastDecoder

from tests.conftest import golden_dir

ATOL = RTOL = 1e-4  # the golden tolerance (tests/vision_tokenizer/test_dualvitok_golden.py)
RECONSTRUCTION = "decode_code.reconstruction"


def _cases() -> list[Path]:
    summary = json.loads((golden_dir() / "dualvitok_summary.json").read_text())
    return [golden_dir() / name for name, entry in sorted(summary["files"].items()) if RECONSTRUCTION in entry["tensors"]]


@pytest.fixture(scope="module")
def model() -> DualViTok:
    folder = golden_dir()
    return DualViTok.from_pretrained(
        folder / "dualvitok_tiny_state_dict.safetensors", config=folder / "dualvitok_tiny_config.json"
    ).eval()


def test_golden_cases_with_reconstructions_exist() -> None:
    assert _cases(), f"no case with {RECONSTRUCTION} in {golden_dir()}/dualvitok_summary.json"


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.stem)
def test_fp32_channels_last_matches_the_golden_reconstruction(model: DualViTok, case: Path) -> None:
    recorded = load_file(case)
    fast = FastDecoder(model, dtype=torch.float32, channels_last=True, compile=False)
    got = fast.decode_code(recorded["encode.indices_semantic"], recorded["encode.indices_pixel"])
    torch.testing.assert_close(got, recorded[RECONSTRUCTION], atol=ATOL, rtol=RTOL)
    assert next(model.pixel_decoder.parameters()).dtype == torch.float32  # the model is left as it was


def test_bf16_is_close_to_fp32_and_lists_decode_per_size(model: DualViTok) -> None:
    cases = sorted((load_file(case) for case in _cases()), key=lambda c: c["encode.indices_pixel"].numel())[:2]
    semantic = [c["encode.indices_semantic"] for c in cases]
    pixel = [c["encode.indices_pixel"] for c in cases]
    exact = FastDecoder(model, dtype=torch.float32, channels_last=False, compile=False).decode_code(semantic, pixel)
    fast = FastDecoder(model, dtype=torch.bfloat16, compile=False).decode_code(semantic, pixel)
    assert [f.shape for f in fast] == [c[RECONSTRUCTION].shape for c in cases]
    for got, want in zip(fast, exact):
        assert got.dtype == torch.float32
        psnr = 10 * torch.log10(4.0 / ((got - want) ** 2).mean())  # images span [-1, 1]
        assert psnr > 30, float(psnr)
