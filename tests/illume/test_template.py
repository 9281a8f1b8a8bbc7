"""The qwen2 chat template and supervised label masking (SPEC-mllm C7, formats.md §4)."""

from __future__ import annotations

from pathlib import Path

import pytest
from illume.data.conversation import ASSISTANT, USER, get_template
from illume.data.preprocess import conversation_messages, tokenize_conversation, tokenizer_image_token
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from transformers import AutoTokenizer

QWEN2 = get_template("qwen2")


@pytest.fixture(scope="module")
def tokenizer(golden: Path):
    return AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer", padding_side="left")


def test_render_matches_formats_md_prompt() -> None:
    prompt = QWEN2.generation_prompt("<image>\ndepict the image in short")
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<image>\ndepict the image in short<|im_end|>\n<|im_start|>assistant\n"
    )
    tag = "<height_512><width_512>"
    assert QWEN2.generation_prompt("hi", tag).endswith("<|im_start|>assistant\n" + tag)


def test_render_marks_only_the_template_text() -> None:
    """What a message says is user text (never control tokens at inference); roles and separators are the template's."""
    prompt = QWEN2.render([(USER, "<|im_end|>hi"), (ASSISTANT, None)])
    user = [text for text, is_template in prompt.pieces() if not is_template]
    assert user == ["<|im_end|>hi"]
    assert "".join(text for text, _ in prompt.pieces()) == prompt


def test_unknown_template_lists_choices() -> None:
    with pytest.raises(ValueError, match="qwen2"):
        get_template("vicuna_v1")


def test_image_sentinel_per_occurrence(tokenizer) -> None:
    ids = tokenizer_image_token("<image>a<image><image>b", tokenizer)
    assert ids.count(IMAGE_TOKEN_INDEX) == 3
    assert ids[0] == IMAGE_TOKEN_INDEX and ids[-1] != IMAGE_TOKEN_INDEX


def _expected_labels(ids: list[int], tokenizer) -> list[int]:
    """Independent oracle: scan the ids for each assistant header and keep what follows up to and
    including `<|im_end|>` and the next token."""
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    labels = [IGNORE_INDEX] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i : i + len(header)] == header:
            j = i + len(header)
            while ids[j] != im_end:
                labels[j] = ids[j]
                j += 1
            labels[j] = ids[j]
            labels[j + 1] = ids[j + 1]
            i = j + 2
        else:
            i += 1
    return labels


def test_hand_built_conversation_masks_exactly_non_assistant_tokens(tokenizer) -> None:
    conversation = [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": "A frog in a hat."},
        {"from": "human", "value": "What colour is the hat?"},
        {"from": "gpt", "value": "Brown, with a dark band."},
    ]
    example = tokenize_conversation(conversation_messages(conversation), tokenizer, QWEN2)
    assert example.labels == _expected_labels(example.input_ids, tokenizer)
    supervised = [t for t in example.labels if t != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "A frog in a hat.<|im_end|>\nBrown, with a dark band.<|im_end|>\n"
    assert example.input_ids == tokenizer_image_token(
        QWEN2.render(
            [(USER, c["value"]) if c["from"] == "human" else (ASSISTANT, c["value"]) for c in conversation]
        ),
        tokenizer,
    )


@pytest.mark.parametrize(
    ("conversation", "message"),
    [
        ([{"from": "gpt", "value": "hi"}], "alternate"),
        ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "alternate"),
        ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "  "}], "empty assistant"),
        ([{"from": "system", "value": "a"}], "'from' must be one of"),
        ([{"from": "human", "value": 3}], "must be a string"),
        ([], "non-empty list"),
    ],
)
def test_malformed_conversations_are_rejected(conversation, message) -> None:
    with pytest.raises(ValueError, match=message):
        conversation_messages(conversation)
