"""Shared fixtures: where the golden reference data lives, and small deterministic helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """The golden folder: `ILLUME_GOLDEN_DIR`, else `../shared/reference/golden` beside the checkout."""
    env = os.environ.get("ILLUME_GOLDEN_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "reference" / "golden"


def manifests_dir() -> Path:
    return golden_dir().parent / "manifests"


@pytest.fixture(scope="session")
def golden() -> Path:
    path = golden_dir()
    if not path.is_dir():
        pytest.fail(f"golden data not found at {path}; set ILLUME_GOLDEN_DIR")
    return path


@pytest.fixture()
def one_thread():
    """torch on one thread for the test (tiny models: thread hand-offs cost more than they save)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield


def golden_summary(golden: Path) -> dict:
    """`mllm_summary.json`: each case's official prompt, image source and shapes."""
    import json

    return json.loads((golden / "mllm_summary.json").read_text())


def golden_case_image(golden: Path, case: str = "one_image") -> torch.Tensor:
    """The [-1, 1] image tensor a golden MLLM case was run on (its summary's `image_source`)."""
    from safetensors.torch import load_file

    file_name, key = golden_summary(golden)[case]["image_source"].split(":")
    return load_file(golden / file_name)[key]


def golden_question(prompt: str) -> str:
    """The user's text of an official one-turn prompt, without the template's `<image>` lines."""
    user = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    while user.startswith("<image>\n"):
        user = user.removeprefix("<image>\n")
    return user
