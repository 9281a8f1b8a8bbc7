"""HF format: origin folder → export → Auto classes → the golden logits; processor; converters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from illume.hf import IllumeProcessor, convert_origin, convert_remote_hf
from illume.hf.convert import main as convert_main
from illume.vocab import IMAGE_TOKEN_INDEX, ImageGrid
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoProcessor

from tests.conftest import golden_case_image, golden_question
from tests.illume import tiny_models

ATOL = RTOL = 1e-4

tiny_origin_dir = tiny_models.tiny_origin_dir  # shared session fixture


@pytest.fixture(scope="module")
def hf_dir(tiny_origin_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_origin(tiny_origin_dir, tmp_path_factory.mktemp("hf") / "tiny-hf")


@pytest.fixture(scope="module")
def one_image(golden: Path) -> dict[str, torch.Tensor]:
    return load_file(golden / "mllm_tiny_one_image.safetensors")


@pytest.fixture(scope="module")
def golden_image(golden: Path) -> torch.Tensor:
    return golden_case_image(golden)


def test_export_is_self_contained(hf_dir: Path) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    tower = config["mm_vision_tower"]
    assert isinstance(tower["vq_config"], dict) and tower["vq_config"]["type"] == "DualViTok"
    assert "vq_ckpt" not in tower and "auto_map" not in config
    assert config["model_type"] == "illume_qwen2"
    processor_config = json.loads((hf_dir / "processor_config.json").read_text())
    assert processor_config["processor_class"] == "IllumeProcessor"
    assert (hf_dir / "chat_template.jinja").is_file()


def test_auto_classes_reproduce_golden_logits(
    hf_dir: Path, one_image: dict, golden_image: torch.Tensor
) -> None:
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert not hasattr(model.config, "auto_map")
    with torch.no_grad():
        logits = model(input_ids=one_image["input_ids"], images=[golden_image]).logits
    torch.testing.assert_close(logits, one_image["logits"], atol=ATOL, rtol=RTOL)


def test_processor_builds_the_official_prompt_ids(
    hf_dir: Path, one_image: dict, summary_prompt: str, golden_image: torch.Tensor
) -> None:
    height, width = golden_image.shape[-2:]  # the size of the golden case's image
    processor = AutoProcessor.from_pretrained(hf_dir)
    assert isinstance(processor, IllumeProcessor)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": golden_question(summary_prompt)}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == summary_prompt
    image = Image.fromarray(np.full((height, width, 3), 90, dtype=np.uint8))
    inputs = processor(text=prompt, images=[image])
    official = one_image["input_ids"][0].tolist()
    ids = inputs["input_ids"][0].tolist()
    marker = official.index(IMAGE_TOKEN_INDEX)
    block = ids[marker : len(ids) - (len(official) - marker - 1)]
    # Text around the image is the official prompt; the image became its whole block.
    assert ids[:marker] + [IMAGE_TOKEN_INDEX] + ids[marker + len(block) :] == official
    assert len(ids) == one_image["prepare.attention_mask"].shape[1]
    vocab = processor.vocabulary
    assert block[0] == vocab.start_of_image and block[-1] == vocab.end_of_image
    grid = ImageGrid.for_resolution(height, width)
    assert block.count(processor.image_token_id) == grid.num_semantic + grid.num_pixel
    assert [tuple(x.shape) for x in inputs["pixel_values"]] == [(1, 3, height, width)]
    # 90/255 through the official processor: (x - 0.5) / 0.5
    torch.testing.assert_close(inputs["pixel_values"][0], torch.full((1, 3, height, width), (90 / 255 - 0.5) / 0.5))


def test_processor_pads_batches_on_the_left(hf_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(hf_dir)
    inputs = processor(text=["Hi", "Who are you?"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    short = processor.tokenizer("Hi", add_special_tokens=False)["input_ids"]
    assert ids.shape[0] == 2 and mask[0].sum() == len(short)
    assert mask[0, -len(short) :].all() and not mask[0, : ids.shape[1] - len(short)].any()
    assert ids[0, -len(short) :].tolist() == short


def test_processor_rejects_marker_image_mismatch(hf_dir: Path) -> None:
    processor = AutoProcessor.from_pretrained(hf_dir)
    with pytest.raises(ValueError, match="1 <image> markers but 0 images"):
        processor(text="<image>\nDescribe.")


def test_origin_override_files_are_applied(tiny_origin_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "origin"
    shutil.copytree(tiny_origin_dir, src)
    key = "model.mm_projector.projector_1.0.bias"
    bias = load_file(src / "model.safetensors")[key]
    torch.save({key: torch.full_like(bias, 0.5)}, src / "trainables.bin")
    out = convert_origin(src, tmp_path / "hf")
    assert torch.equal(load_file(out / "model.safetensors")[key], torch.full_like(bias, 0.5))


def test_origin_override_with_unknown_key_is_an_error(tiny_origin_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "origin"
    shutil.copytree(tiny_origin_dir, src)
    torch.save({"model.not_a_layer.weight": torch.zeros(1)}, src / "mm_projector.bin")
    with pytest.raises(ValueError, match="not_a_layer"):
        convert_origin(src, tmp_path / "hf")


def _remote_folder(tiny_origin_dir: Path, out: Path, extra_key: str | None = None) -> Path:
    """A remote-code style folder: `auto_map` in config.json, LLM keys under `language_model.`."""
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "dualvitok_tiny_config.json"):
        shutil.copy2(tiny_origin_dir / name, out / name)
    config = json.loads((tiny_origin_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_illume.IllumeForConditionalGeneration"}
    (out / "config.json").write_text(json.dumps(config))
    state = load_file(tiny_origin_dir / "model.safetensors")
    renamed = {("language_model." + k if k.startswith("model.layers.") else k): v for k, v in state.items()}
    if extra_key:
        renamed[extra_key] = torch.zeros(2)
    save_file(renamed, str(out / "model.safetensors"))
    return out


def test_remote_layout_converts_to_the_same_weights(tiny_origin_dir: Path, tmp_path: Path) -> None:
    src = _remote_folder(tiny_origin_dir, tmp_path / "remote")
    out = convert_remote_hf(src, tmp_path / "hf")
    assert (
        load_file(out / "model.safetensors").keys() == load_file(tiny_origin_dir / "model.safetensors").keys()
    )
    assert "auto_map" not in json.loads((out / "config.json").read_text())


def test_remote_layout_with_unknown_keys_is_reported(tiny_origin_dir: Path, tmp_path: Path) -> None:
    src = _remote_folder(tiny_origin_dir, tmp_path / "remote", extra_key="visual_head.weight")
    with pytest.raises(ValueError, match="visual_head.weight"):
        convert_remote_hf(src, tmp_path / "hf")


def test_cli_refuses_to_overwrite(tiny_origin_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(SystemExit):
        convert_main([str(tiny_origin_dir), str(tmp_path / "taken")])


@pytest.fixture(scope="module")
def summary_prompt(golden: Path) -> str:
    return json.loads((golden / "mllm_summary.json").read_text())["one_image"]["prompt"]


_DECODER_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "vocab_size", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                 "tie_word_embeddings", "hidden_act")  # fmt: skip


def _shard(state: dict[str, torch.Tensor], folder: Path, kind: str) -> None:
    """Two shards + the index json, as `save_pretrained(max_shard_size=...)` writes them."""
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    suffix = "safetensors" if kind == "safetensors" else "bin"
    stem = "model" if kind == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"{stem}-{i:05d}-of-00002.{suffix}"
        chunk = {k: state[k].contiguous() for k in part}
        save_file(chunk, str(folder / name)) if kind == "safetensors" else torch.save(chunk, folder / name)
        weight_map.update(dict.fromkeys(part, name))
    index = f"{stem}.{suffix}.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("layout", ["bin-shards", "safetensors-shards", "nested-config"])
def test_released_hf_layouts_convert(tiny_origin_dir: Path, tmp_path: Path, layout: str) -> None:
    src = _remote_folder(tiny_origin_dir, tmp_path / "remote")
    if layout != "nested-config":
        state = load_file(src / "model.safetensors")
        (src / "model.safetensors").unlink()
        _shard(state, src, "bin" if layout == "bin-shards" else "safetensors")
    else:
        flat = json.loads((src / "config.json").read_text())
        nested = {k: v for k, v in flat.items() if k not in _DECODER_KEYS and k != "mm_vision_tower"}
        nested["text_config"] = {"model_type": "qwen2", **{k: flat[k] for k in _DECODER_KEYS}}
        nested["vision_config"] = flat["mm_vision_tower"]
        (src / "config.json").write_text(json.dumps(nested))
    out = convert_remote_hf(src, tmp_path / "hf")
    origin = load_file(tiny_origin_dir / "model.safetensors")
    converted = load_file(out / "model.safetensors")
    assert converted.keys() == origin.keys()
    assert all(torch.equal(converted[k], origin[k]) for k in origin)
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
