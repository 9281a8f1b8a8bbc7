"""Checkpoint compatibility: the 3B manifest on the meta device, save/load, the golden folder layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from illume.model import IllumeQwen2Config, IllumeQwen2ForCausalLM
from illume.vocab import ImageVocabulary
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tests.conftest import golden_case_image, manifests_dir
from tests.illume.test_mllm_golden import build_golden_model

ATOL = RTOL = 1e-4


@pytest.fixture(scope="module")
def golden_model(golden: Path) -> IllumeQwen2ForCausalLM:
    return build_golden_model(golden)


@pytest.fixture(scope="module")
def one_image(golden: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    case = load_file(golden / "mllm_tiny_one_image.safetensors")
    image = golden_case_image(golden)
    return case["input_ids"], image, case["logits"]


def _manifest_config() -> IllumeQwen2Config:
    return IllumeQwen2Config(
        **json.loads((manifests_dir() / "illume_plus_qwen2_5_3b_config.json").read_text())
    )


def test_3b_on_meta_matches_manifest_exactly() -> None:
    manifest = json.loads((manifests_dir() / "illume_plus_qwen2_5_3b.json").read_text())
    with torch.device("meta"):
        model = IllumeQwen2ForCausalLM(_manifest_config())
    state = model.state_dict()
    expected = manifest["state_dict"]
    assert sorted(state) == sorted(expected)
    wrong = {k: (list(v.shape), expected[k][0]) for k, v in state.items() if list(v.shape) != expected[k][0]}
    assert wrong == {}
    assert all(str(v.dtype).removeprefix("torch.") == expected[k][1] for k, v in state.items())
    for alias, original in manifest["state_dict_aliases"].items():
        assert model.get_parameter(alias) is model.get_parameter(original)
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def test_untied_head_when_config_says_so(golden: Path, tmp_path: Path) -> None:
    values = json.loads((golden / "mllm_tiny_config.json").read_text())
    values["mm_vision_tower"]["vq_config"] = json.loads((golden / "dualvitok_tiny_config.json").read_text())
    values["tie_word_embeddings"] = False  # like Qwen2.5-7B
    model = IllumeQwen2ForCausalLM(IllumeQwen2Config(**values))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert saved["lm_head.weight"].shape == saved["model.embed_tokens.weight"].shape == (1447, 64)


def test_save_pretrained_round_trip(golden_model: IllumeQwen2ForCausalLM, one_image, tmp_path: Path) -> None:
    golden_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "illume_qwen2"
    assert config["architectures"] == ["IllumeQwen2ForCausalLM"]
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")  # tied, like the release
    assert isinstance(AutoConfig.from_pretrained(tmp_path), IllumeQwen2Config)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(reloaded, IllumeQwen2ForCausalLM)
    for key, value in golden_model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    ids, image, _ = one_image
    with torch.no_grad():
        before = golden_model(input_ids=ids, images=[image]).logits
        after = reloaded(input_ids=ids, images=[image]).logits
    assert torch.equal(before, after)


def _golden_folder(golden: Path, target: Path) -> Path:
    """The released layout at tiny scale: config.json + model.safetensors + tokenizer files."""
    target.mkdir()
    values = json.loads((golden / "mllm_tiny_config.json").read_text())
    values["mm_vision_tower"]["vq_config"] = "dualvitok_tiny_config.json"  # beside config.json
    (target / "config.json").write_text(json.dumps(values))
    shutil.copy(golden / "dualvitok_tiny_config.json", target)
    shutil.copy(golden / "mllm_tiny_state_dict.safetensors", target / "model.safetensors")
    for item in (golden / "mllm_tiny_tokenizer").iterdir():
        shutil.copy(item, target)
    return target


def test_golden_folder_loads_through_auto_classes(golden: Path, one_image, tmp_path: Path) -> None:
    folder = _golden_folder(golden, tmp_path / "release")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    assert ImageVocabulary.from_tokenizer(tokenizer).special_tokens_ids == model.config.special_tokens_ids
    ids, image, logits = one_image
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), images=[image]).logits
    torch.testing.assert_close(out, logits, atol=ATOL, rtol=RTOL)


def test_checkpoint_missing_weights_is_an_error(golden: Path, tmp_path: Path) -> None:
    folder = _golden_folder(golden, tmp_path / "release")
    weights = load_file(folder / "model.safetensors")
    del weights["model.vision_tower.pixel_encoder.conv_in.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(
        ValueError, match=r"no weights for model\.vision_tower\.pixel_encoder\.conv_in\.weight"
    ):
        AutoModelForCausalLM.from_pretrained(folder)
    model = IllumeQwen2ForCausalLM.from_pretrained(folder, allow_missing_weights=True)
    assert model.model.vision_tower.pixel_encoder.conv_in.weight.shape == (32, 3, 3, 3)


def test_checkpoint_with_mismatched_shape_is_an_error(golden: Path, tmp_path: Path) -> None:
    folder = _golden_folder(golden, tmp_path / "release")
    weights = load_file(folder / "model.safetensors")
    weights["model.mm_projector.projector_1.0.weight"] = torch.zeros(64, 95)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_checkpoint_without_weight_files_is_an_error(golden: Path, tmp_path: Path) -> None:
    folder = _golden_folder(golden, tmp_path / "release")
    (folder / "model.safetensors").unlink()
    with pytest.raises(OSError, match="release"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_missing_vq_config_names_every_place_looked(golden: Path, tmp_path: Path) -> None:
    folder = _golden_folder(golden, tmp_path / "release")
    (folder / "dualvitok_tiny_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"dualvitok_tiny_config\.json.*release"):
        AutoModelForCausalLM.from_pretrained(folder)


def test_official_vq_config_name_resolves_from_the_package(monkeypatch, tmp_path: Path) -> None:
    """`configs/example/dualvitok/...py` needs no checkout: the package ships the official configs."""
    monkeypatch.chdir(tmp_path)
    config = _manifest_config()
    with torch.device("meta"):
        model = IllumeQwen2ForCausalLM(config)
    assert model.model.vision_tower.hidden_size == [3584, 32]
