"""Tiny ILLUME+ checkpoint folders assembled from the golden data, once per test session.

The golden folder holds the tiny MLLM as loose files (config, state dict, tokenizer) and the tiny
DualViTok as a config json + state dict. The surfaces (demo, notebook, lmms-eval plugin, HF export)
load checkpoints the way users do, from folders, so these fixtures lay the files out as:

* `tiny_origin_dir`: the official origin format (`save_pretrained` of the MLLM + tokenizer), with
  `vq_config` naming a DualViTok json that sits beside `config.json`;
* `tiny_dualvitok_dir`: a DualViTok folder (`config.json` + `model.safetensors`).

Import the fixtures into a test module (`from tests.illume.tiny_models import tiny_origin_dir`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

MLLM_CONFIG = "mllm_tiny_config.json"
MLLM_WEIGHTS = "mllm_tiny_state_dict.safetensors"
MLLM_TOKENIZER = "mllm_tiny_tokenizer"
VQ_CONFIG = "dualvitok_tiny_config.json"
VQ_WEIGHTS = "dualvitok_tiny_state_dict.safetensors"

__all__ = ["write_tiny_origin_model", "write_tiny_dualvitok", "tiny_origin_dir", "tiny_dualvitok_dir"]


def write_tiny_origin_model(golden: Path, out: Path) -> Path:
    """Lay the golden tiny MLLM out as an origin-format checkpoint folder at `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for item in (golden / MLLM_TOKENIZER).iterdir():
        shutil.copy2(item, out / item.name)
    shutil.copy2(golden / MLLM_WEIGHTS, out / "model.safetensors")
    shutil.copy2(golden / VQ_CONFIG, out / VQ_CONFIG)
    config = json.loads((golden / MLLM_CONFIG).read_text())
    config["mm_vision_tower"]["vq_config"] = VQ_CONFIG
    config["mm_vision_tower"]["vq_ckpt"] = None
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def write_tiny_dualvitok(golden: Path, out: Path) -> Path:
    """Lay the golden tiny DualViTok out as a `save_pretrained`-style folder at `out`."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(golden / VQ_CONFIG, out / "config.json")
    shutil.copy2(golden / VQ_WEIGHTS, out / "model.safetensors")
    return out


@pytest.fixture(scope="session")
def tiny_origin_dir(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_origin_model(golden, tmp_path_factory.mktemp("tiny_mllm"))


@pytest.fixture(scope="session")
def tiny_dualvitok_dir(golden: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_dualvitok(golden, tmp_path_factory.mktemp("tiny_dualvitok"))


def write_tiny_sdxl_decoder(out: Path, code_channels: int = 16, seed: int = 0) -> Path:
    """A randomly initialised SDXL decoder folder (released layout) sized for the tiny DualViTok.

    `code_channels` is the tokenizer's merged code-map width (8 semantic + 8 pixel for the tiny one).
    """
    from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline
    from vision_tokenizer.sdxl.tiny import tiny_sdxl_components

    vae, unet, scheduler = tiny_sdxl_components(code_channels, seed)
    DualViTokSDXLDecoderPipeline(vae=vae, unet=unet, scheduler=scheduler).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sdxl_decoder(tmp_path_factory.mktemp("tiny_sdxl") / "dualvitok-sdxl-decoder")
