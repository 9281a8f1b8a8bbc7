"""`illume.vocab`: the id layout against formats.md / the golden tokenizers, and the image grammar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from illume.vocab import (
    IGNORE_INDEX,
    RATIOS,
    SPECIAL_IMAGE_TOKENS,
    ImageGrid,
    ImageVocabulary,
    MalformedImageTokens,
    anchor_grids,
    extension_tokens,
    image_block_text,
)
from safetensors.torch import load_file
from transformers import AutoTokenizer

QWEN25_TEXT_TOKENS = 151665  # len(Qwen2.5 tokenizer) before extension (formats.md §1)


class _TableTokenizer:
    """Just enough of a tokenizer for `ImageVocabulary.from_tokenizer`: a token → id table."""

    def __init__(self, table: dict[str, int], pad: int | None = None) -> None:
        self.table = table
        self.pad_token_id = pad
        self.unk_token_id = None

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int | None]:
        return [self.table.get(t) for t in tokens]

    def get_added_vocab(self) -> dict[str, int]:
        return self.table


def _full_size_tokenizer() -> _TableTokenizer:
    """The full Qwen2.5 + ILLUME layout as the official script creates it (added after 151665)."""
    table = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
    table.update({tok: QWEN25_TEXT_TOKENS + i for i, tok in enumerate(extension_tokens())})
    return _TableTokenizer(table, pad=151643)


@pytest.fixture(scope="module")
def full_vocab() -> ImageVocabulary:
    return ImageVocabulary.from_tokenizer(_full_size_tokenizer())


@pytest.fixture(scope="module")
def tiny_tokenizer(golden: Path):
    return AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer", padding_side="left")


@pytest.fixture(scope="module")
def tiny_vocab(tiny_tokenizer) -> ImageVocabulary:
    return ImageVocabulary.from_tokenizer(tiny_tokenizer)


def test_full_size_layout_matches_formats_md(full_vocab: ImageVocabulary) -> None:
    assert full_vocab.special_tokens_ids == [151665, 151666, 151667, 151668, 151669, 151670, 151671]
    assert full_vocab.height_tags == tuple(range(151672, 151688))
    assert full_vocab.width_tags == tuple(range(151688, 151704))
    assert full_vocab.level_range(0) == (151704, 184472)
    assert full_vocab.level_range(1) == (184472, 282776)
    assert full_vocab.codebook_sizes == (32768, 98304)
    assert full_vocab.num_tokens == 282776
    assert full_vocab.text_token_num == 151665
    assert full_vocab.end_of_text == 151645 and full_vocab.pad == 151643
    assert full_vocab.resolution_tag_ids(512, 512) == [151679, 151695]
    assert len(extension_tokens()) == 131111


def test_tiny_tokenizer_layout_matches_golden_summary(golden: Path, tiny_vocab: ImageVocabulary) -> None:
    layout = json.loads((golden / "mllm_summary.json").read_text())["id_layout"]
    specials = layout["image_special_tokens"]
    assert tiny_vocab.special_tokens_ids == [specials[name] for name in SPECIAL_IMAGE_TOKENS]
    assert [tiny_vocab.height_tags[0], tiny_vocab.height_tags[-1]] == layout["height_tokens"]
    assert [tiny_vocab.width_tags[0], tiny_vocab.width_tags[-1]] == layout["width_tokens"]
    for level in (0, 1):
        start, stop = tiny_vocab.level_range(level)
        assert [start, stop - 1] == layout[f"level{level}_tokens"]
    assert tiny_vocab.num_tokens == layout["len_tokenizer"]
    assert tiny_vocab.end_of_text == layout["qwen_special_tokens"]["<|im_end|>"]
    assert tiny_vocab.pad == layout["qwen_special_tokens"]["<|endoftext|>"]


def test_tiny_config_special_ids_agree(golden: Path, tiny_vocab: ImageVocabulary) -> None:
    config = json.loads((golden / "mllm_tiny_config.json").read_text())
    assert tiny_vocab.special_tokens_ids == config["special_tokens_ids"]


def test_block_ids_equal_tokenised_block_text(tiny_tokenizer, tiny_vocab: ImageVocabulary) -> None:
    gen = torch.Generator().manual_seed(3)
    sem = torch.randint(0, 256, (3, 5), generator=gen)
    pix = torch.randint(0, 768, (4, 6), generator=gen)
    ids = tiny_vocab.image_token_ids(sem, pix)
    assert ids == tiny_tokenizer.encode(image_block_text(sem, pix))
    assert len(ids) == ImageGrid((3, 5), (4, 6)).num_tokens == 2 + (3 * 6 + 2) + (4 * 7 + 2)


def _generation_record(golden: Path) -> dict:
    line = (golden / "codebook_inference_examples_generation.jsonl").read_text().splitlines()[0]
    return json.loads(line)


def test_generation_target_matches_full_vocab_golden_labels(
    golden: Path, full_vocab: ImageVocabulary
) -> None:
    record = _generation_record(golden)
    sem, pix = record["image_embed_inds"][0]
    height, width = record["matched_ratios"][0]
    sample = json.loads((golden / "preprocess_fullvocab_qwen25.json").read_text())["generation"]
    target = full_vocab.generation_target_ids(sem, pix, height, width)
    start = sample["first_label_index"]
    assert sample["labels"][start : start + len(target)] == target
    # the target is followed by <|im_end|> and "\n" (198 in Qwen2.5), then nothing is supervised
    assert sample["labels"][start + len(target)] == full_vocab.end_of_text
    assert sample["n_label_tokens"] == len(target) + 2


def test_generation_target_matches_tiny_golden_labels(golden: Path, tiny_vocab: ImageVocabulary) -> None:
    record = _generation_record(golden)
    sem, pix = record["image_embed_inds"][0]
    labels = load_file(golden / "mllm_tiny_train_generation.safetensors")["labels"][0]
    supervised = labels[labels != IGNORE_INDEX].tolist()
    target = tiny_vocab.generation_target_ids(sem, pix, *record["matched_ratios"][0])
    assert supervised[: len(target)] == target
    ((sem_parsed, pix_parsed),) = tiny_vocab.extract_image_codes(supervised)
    assert sem_parsed.tolist() == sem and pix_parsed.tolist() == pix


def test_parse_round_trip_and_schedule(tiny_vocab: ImageVocabulary) -> None:
    grid = ImageGrid((2, 3), (3, 4))
    sem = torch.arange(6).reshape(2, 3) * 7
    pix = torch.arange(12).reshape(3, 4) * 11
    ids = tiny_vocab.image_token_ids(sem, pix)
    got_sem, got_pix = tiny_vocab.parse_image_block(ids, grid)
    assert torch.equal(got_sem, sem) and torch.equal(got_pix, pix)

    plan = tiny_vocab.schedule(grid)
    ids_t = torch.tensor(ids)
    assert len(plan) == len(ids) == grid.num_tokens and plan.grid == grid
    assert tiny_vocab.schedule(grid) is plan  # cached: decoders ask once per row
    plan_forced, plan_level = torch.tensor(plan.forced), torch.tensor(plan.level)
    forced = plan_forced >= 0
    assert torch.equal(plan_forced[forced], ids_t[forced])
    assert torch.equal(plan_level >= 0, ~forced)
    for level in (0, 1):
        assert torch.equal(tiny_vocab.is_code(ids_t, level), plan_level == level)


def test_extract_skips_text_and_finds_every_block(tiny_vocab: ImageVocabulary) -> None:
    a = tiny_vocab.image_token_ids([[1, 2]], [[3], [4]])
    b = tiny_vocab.image_token_ids([[5]], [[6, 7]])
    seq = tiny_vocab.resolution_tag_ids(256, 256) + a + [10, 11] + b + [tiny_vocab.end_of_text]
    blocks = tiny_vocab.extract_image_codes(seq)
    assert [(s.tolist(), p.tolist()) for s, p in blocks] == [([[1, 2]], [[3], [4]]), ([[5]], [[6, 7]])]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda ids, v: ids[:-1], "expected <end_of_image>, found end of sequence"),
        (lambda ids, v: ids + [v.end_of_text], "after <end_of_image>"),
        (lambda ids, v: [i for i in ids if i != v.end_of_line], "expected <end_of_line>"),
        (lambda ids, v: ids[:3] + ids[4:], "row 1 has 2 codes, row 0 has 1"),
        (
            lambda ids, v: [v.level_offsets[1] if i == v.level_offsets[0] + 1 else i for i in ids],
            "found <|image_level1_0|>",
        ),
        (lambda ids, v: ids[1:], "expected <start_of_image>"),
    ],
)
def test_malformed_blocks_raise_with_position(tiny_vocab: ImageVocabulary, mutate, message: str) -> None:
    ids = tiny_vocab.image_token_ids([[1, 2], [3, 4]], [[5, 6]])
    with pytest.raises(MalformedImageTokens) as info:
        tiny_vocab.parse_image_block(mutate(ids, tiny_vocab))
    assert message in str(info.value) and "position" in str(info.value)


def test_grid_mismatch_and_unterminated_block(tiny_vocab: ImageVocabulary) -> None:
    ids = tiny_vocab.image_token_ids([[1, 2]], [[3]])
    with pytest.raises(MalformedImageTokens, match="differ from the expected"):
        tiny_vocab.parse_image_block(ids, ImageGrid((1, 2), (2, 1)))
    with pytest.raises(MalformedImageTokens, match="has no <end_of_image>"):
        tiny_vocab.extract_image_codes([7] + ids[:-1])


def test_code_range_and_tag_errors(tiny_vocab: ImageVocabulary) -> None:
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        tiny_vocab.codes_to_ids(0, [0, 256])
    with pytest.raises(ValueError, match="not a level-1 code"):
        tiny_vocab.ids_to_codes(1, [tiny_vocab.level_offsets[0]])
    with pytest.raises(ValueError, match="<height_500>"):
        tiny_vocab.height_tag_id(500)
    assert tiny_vocab.ids_to_codes(1, tiny_vocab.codes_to_ids(1, [0, 767])).tolist() == [0, 767]


def test_missing_tokens_and_bad_table() -> None:
    with pytest.raises(ValueError, match="tokenizer lacks .*<start_of_image>"):
        ImageVocabulary.from_tokenizer(_TableTokenizer({"<|im_end|>": 2}), codebook_sizes=(4, 4))
    table = _full_size_tokenizer().table
    del table["<|image_level1_5|>"]
    table["<|image_level1_98303|>"] += 1
    with pytest.raises(ValueError, match="not contiguous"):
        ImageVocabulary.from_tokenizer(_TableTokenizer(table), codebook_sizes=(32768, 98304))
    with pytest.raises(ValueError, match="missing \\['pad'\\]"):
        ImageVocabulary.from_dict(
            {
                k: v
                for k, v in ImageVocabulary.from_tokenizer(_full_size_tokenizer()).to_dict().items()
                if k != "pad"
            }
        )


def test_id_table_round_trip(tiny_vocab: ImageVocabulary) -> None:
    table = json.loads(json.dumps(tiny_vocab.to_dict()))
    assert ImageVocabulary.from_dict(table) == tiny_vocab


# formats.md §2 table: (H, W) -> semantic grid, pixel grid, image-block token count
FORMATS_TABLE = {
    (256, 256): ((9, 9), (16, 16), 368),
    (512, 512): ((18, 18), (32, 32), 1404),
    (384, 512): ((12, 16), (24, 32), 1002),
    (512, 384): ((16, 12), (32, 24), 1014),
    (384, 768): ((13, 26), (24, 48), 1533),
    (768, 384): ((26, 13), (48, 24), 1570),
    (384, 576): ((12, 18), (24, 36), 1122),
    (576, 384): ((18, 12), (36, 24), 1140),
    (320, 960): ((11, 33), (20, 60), 1600),
    (960, 320): ((33, 11), (60, 20), 1662),
    (256, 1024): ((9, 36), (16, 64), 1379),
    (1024, 256): ((36, 9), (64, 16), 1454),
    (384, 640): ((13, 22), (24, 40), 1289),
    (256, 384): ((9, 13), (16, 24), 532),
    (256, 512): ((9, 18), (16, 32), 705),
}


@pytest.mark.parametrize("size", sorted(FORMATS_TABLE))
def test_grids_and_token_counts_match_formats_table(size: tuple[int, int]) -> None:
    sem, pix, count = FORMATS_TABLE[size]
    grid = ImageGrid.for_resolution(*size)
    assert (grid.semantic, grid.pixel, grid.num_tokens) == (sem, pix, count)


def test_grids_match_golden_resolution_mapping(golden: Path) -> None:
    entries = json.loads((golden / "resolution_mapping.json").read_text())["entries"]
    for entry in entries:
        grid = ImageGrid.for_resolution(*entry["input_hw"])
        assert list(grid.semantic) == entry["semantic_tokens_hw"]
        assert list(grid.pixel) == entry["pixel_tokens_hw"]


def test_anchor_grids_cover_the_eleven_anchors() -> None:
    grids = anchor_grids()
    assert list(grids) == list(RATIOS) and len(RATIOS) == 11
    assert all(g.num_tokens == FORMATS_TABLE[a][2] for a, g in grids.items())


def test_bad_resolution_raises() -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        ImageGrid.for_resolution(250, 256)
