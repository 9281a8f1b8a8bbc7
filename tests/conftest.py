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


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.manual_seed(0)
    yield
