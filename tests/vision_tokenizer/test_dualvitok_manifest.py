"""The full-size DualViTok built from the official config has exactly the released checkpoint's keys."""

from __future__ import annotations

import json

import pytest
import torch
from vision_tokenizer.models.dualvitok import DualViTok

from tests.conftest import REPO_ROOT, manifests_dir

OFFICIAL_CONFIG = REPO_ROOT / "configs" / "example" / "dualvitok" / "dualvitok_anyres_max512.py"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((manifests_dir() / "dualvitok_anyres_max512.json").read_text())


@pytest.fixture(scope="module")
def full_model() -> DualViTok:
    with torch.device("meta"):
        return DualViTok.from_config(OFFICIAL_CONFIG)


def test_state_dict_keys_and_shapes_match_manifest(full_model, manifest):
    ours = {
        key: (list(t.shape), str(t.dtype).removeprefix("torch."))
        for key, t in full_model.state_dict().items()
    }
    expected = {key: (shape, dtype) for key, (shape, dtype) in manifest["state_dict"].items()}
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    mismatched = {key: (ours[key], expected[key]) for key in expected if ours[key] != expected[key]}
    assert mismatched == {}
    assert len(ours) == manifest["num_state_dict_keys"]


def test_parameter_count_matches_manifest(full_model, manifest):
    assert sum(p.numel() for p in full_model.parameters()) == manifest["num_parameters"]


def test_buffers_persistence_matches_manifest(full_model, manifest):
    buffers = dict(full_model.named_buffers())
    state_keys = set(full_model.state_dict())
    for name, info in manifest["buffers"].items():
        assert name in buffers, name
        assert list(buffers[name].shape) == info["shape"], name
        assert (name in state_keys) == info["persistent_in_state_dict"], name
