"""Tiny-MLLM parity with the official code: every `mllm_tiny_*.safetensors` case in the golden folder.

Cases are discovered by glob. What a case checks is read from its tensor names: plain forwards
(`logits`), the image path (`vision_tower.*`, `mm_projector.output`, `encode_images.*`,
`prepare.*`) and training samples (`loss`, `per_token_nll`, `prepare.labels`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from illume.model import IllumeQwen2Config, IllumeQwen2ForCausalLM
from illume.vocab import IGNORE_INDEX, SPECIAL_IMAGE_TOKENS
from safetensors.torch import load_file

from tests.conftest import golden_dir

ATOL = RTOL = 1e-4
CASE_PREFIX = "mllm_tiny_"
STATE_DICT = "mllm_tiny_state_dict.safetensors"
DUMMY_IMAGE_SHAPE = (1, 3, 256, 256)  # the training collator's placeholder (base_resolution 256)


def _case_files() -> list[Path]:
    return sorted(p for p in golden_dir().glob(f"{CASE_PREFIX}*.safetensors") if p.name != STATE_DICT)


def build_golden_model(golden: Path) -> IllumeQwen2ForCausalLM:
    """The tiny MLLM from its config.json (vq_config → the golden DualViTok dict) and state dict."""
    values = json.loads((golden / "mllm_tiny_config.json").read_text())
    values["mm_vision_tower"]["vq_config"] = json.loads((golden / "dualvitok_tiny_config.json").read_text())
    model = IllumeQwen2ForCausalLM(IllumeQwen2Config(**values))
    missing, unexpected = model.load_state_dict(load_file(golden / STATE_DICT), strict=False)
    assert (missing, unexpected) == (["lm_head.weight"], [])  # tied alias, absent from the file
    return model.eval()


@pytest.fixture(scope="module")
def model(golden: Path) -> IllumeQwen2ForCausalLM:
    return build_golden_model(golden)


@pytest.fixture(scope="module")
def summary(golden: Path) -> dict:
    return json.loads((golden / "mllm_summary.json").read_text())


def _uint8_to_input(u8: torch.Tensor) -> torch.Tensor:
    """golden/README §C: ((u8 * (1/255) in float64 → float32) − 0.5) / 0.5, as [1,3,H,W]."""
    x = ((u8.numpy().astype(np.float64) * (1 / 255)).astype(np.float32) - np.float32(0.5)) / np.float32(0.5)
    return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def _case_images(name: str, tensors: dict, summary: dict, golden: Path) -> list[torch.Tensor] | None:
    if "image" in tensors:
        return [tensors["image"]]
    stored = sorted(k for k in tensors if k.startswith("images.") and k.endswith(".uint8_hwc"))
    if "labels" in tensors:  # training sample: stored images, else the collator's placeholder
        info = summary.get("training_samples", {}).get(name.removeprefix("train_"), {})
        shapes = info.get("images_shapes")
        shapes = json.loads(shapes) if isinstance(shapes, str) else shapes
        if not shapes:
            shapes = [DUMMY_IMAGE_SHAPE] if not stored else [None] * len(stored)
        return [
            _uint8_to_input(tensors[f"images.{i}.uint8_hwc"]) if f"images.{i}.uint8_hwc" in tensors
            else torch.zeros(shape)
            for i, shape in enumerate(shapes)
        ]  # fmt: skip
    source = summary.get(name, {}).get("image_source")
    if source is None:
        return None
    file_name, key = source.split(":")
    return [load_file(golden / file_name)[key]]


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(
        actual.float(), expected.float(), atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}"
    )


def test_cases_are_discovered(summary: dict) -> None:
    """Every inference case the summary describes (it has a prompt) and every training sample has its file."""
    names = {p.stem for p in _case_files()}
    described = {key for key, value in summary.items() if isinstance(value, dict) and "prompt" in value}
    assert described and {f"{CASE_PREFIX}{key}" for key in described} <= names
    assert {f"{CASE_PREFIX}train_{key}" for key in summary["training_samples"]} <= names


def run_case(model: IllumeQwen2ForCausalLM, path: Path, summary: dict, monkeypatch) -> dict:
    """One official-style forward; the intermediate results are recorded on the way through."""
    tensors = load_file(path)
    name = path.stem.removeprefix(CASE_PREFIX)
    input_ids = tensors["input_ids"]
    attention_mask = tensors.get("attention_mask", torch.ones_like(input_ids))
    record: dict = {"tensors": tensors, "images": _case_images(name, tensors, summary, path.parent)}
    for owner, method in ((model.model, "prepare_multimodal_inputs"),):
        original = getattr(owner, method)

        def recorder(*args, _original=original, _method=method, **kwargs):
            record[_method] = _original(*args, **kwargs)
            return record[_method]

        monkeypatch.setattr(owner, method, recorder)
    hooks = [
        model.model.vision_tower.register_forward_hook(lambda m, i, o: record.__setitem__("tower", o)),
        model.model.mm_projector.register_forward_hook(lambda m, i, o: record.__setitem__("projector", o)),
    ]
    try:
        with torch.no_grad():
            record["out"] = model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                labels=tensors.get("labels"),
                images=record["images"],
            )
    finally:
        for hook in hooks:
            hook.remove()
        monkeypatch.undo()
    return record


@pytest.mark.parametrize("path", _case_files(), ids=lambda p: p.stem)
def test_golden_case(path: Path, model: IllumeQwen2ForCausalLM, summary: dict, monkeypatch) -> None:
    run = run_case(model, path, summary, monkeypatch)
    tensors, out = run["tensors"], run["out"]
    merged, tower = run.get("prepare_multimodal_inputs"), run.get("tower")
    checked = {"input_ids", "attention_mask", "labels", "image"} | {
        k for k in tensors if k.endswith(".uint8_hwc")
    }
    for key, expected in tensors.items():
        if key in checked:
            continue
        if key == "logits":
            _close(out.logits, expected, key)
        elif key == "loss":
            _close(out.loss.reshape(1), expected, key)
        elif key == "per_token_nll":
            shifted = merged.labels[0, 1:]
            nll = F.cross_entropy(
                out.logits[0, :-1].float(), shifted, ignore_index=IGNORE_INDEX, reduction="none"
            )
            _close(nll, expected, key)
        elif key == "prepare.labels":
            assert torch.equal(merged.labels, expected), key
        elif key == "prepare.attention_mask":
            assert torch.equal(merged.attention_mask.long(), expected.long()), key
        elif key == "prepare.inputs_embeds":
            _close(merged.inputs_embeds, expected, key)
        elif key == "vision_tower.h_semantics":
            _close(torch.cat(tower.semantic)[None], expected, key)
        elif key == "vision_tower.h_pixels":
            _close(torch.cat(tower.pixel)[None], expected, key)
        elif key == "mm_projector.output":
            _close(run["projector"][None], expected, key)
        elif key.startswith("encode_images.image_feature_"):
            with torch.no_grad():
                blocks = model.model.encode_images(run["images"])
            _close(blocks[int(key.rsplit("_", 1)[1])], expected, key)
        else:
            pytest.fail(f"{path.name}: no check for tensor {key!r}")
    if "images" in run and run["images"] is not None and "prepare.inputs_embeds" in tensors:
        _check_layout(model, run, summary.get(path.stem.removeprefix(CASE_PREFIX), {}))


def _check_layout(model: IllumeQwen2ForCausalLM, run: dict, case: dict) -> None:
    """Position by position against the summary's layout: text ids, markers, (row, col) feature rows."""
    layout = case.get("position_layout")
    if layout is None:
        return
    rows = run["prepare_multimodal_inputs"].inputs_embeds[0]
    projected = run["projector"]
    embed = model.model.embed_tokens.weight
    names = dict(zip(SPECIAL_IMAGE_TOKENS, model.config.special_tokens_ids))
    (hs, ws), (hp, wp) = case["image_feature_shapes"][0]
    assert len(layout) == rows.shape[0]
    for pos, entry in enumerate(layout):
        kind = entry[0]
        if kind == "text":
            expected = embed[entry[1]]
        elif kind == "special":
            expected = embed[names[entry[1]]]
        elif kind == "semantic":
            expected = projected[entry[1] * ws + entry[2]]
        else:
            assert kind == "pixel", entry
            expected = projected[hs * ws + entry[1] * wp + entry[2]]
        torch.testing.assert_close(
            rows[pos], expected, atol=ATOL, rtol=RTOL, msg=lambda m, pos=pos: f"position {pos}: {m}"
        )
