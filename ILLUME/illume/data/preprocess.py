"""Conversation → `input_ids` and `labels` for supervised training (SPEC-mllm C7).

Supervised tokens are exactly each assistant turn's content, its `<|im_end|>` and the following
`\n`; everything else (system turn, user turns, role prefixes) is `IGNORE_INDEX`. Every `<image>`
becomes one `IMAGE_TOKEN_INDEX` sentinel, in order, each replaced later by that image's
positions inside the model.

The official code tokenised the whole prompt and then re-derived turn lengths by tokenising
pieces, silently masking the whole sample when the two disagreed. Here the pieces are tokenised
once, labelled as they are produced, and the concatenation is checked against the tokenisation
of the full prompt (what inference sees): a mismatch is an error naming the turn.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vision_tokenizer.data.records import check_conversations

from illume.data.conversation import ASSISTANT, USER, ChatTemplate
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN, IMAGE_TOKEN_INDEX

__all__ = [
    "ROLE_NAMES",
    "tokenizer_image_token",
    "conversation_messages",
    "SupervisedExample",
    "tokenize_conversation",
]

# Speaker names of the training jsonl (`from` field) → template role.
ROLE_NAMES = {"human": USER, "gpt": ASSISTANT}


def tokenizer_image_token(text: str, tokenizer: Any, image_token_index: int = IMAGE_TOKEN_INDEX) -> list[int]:
    """Token ids of `text` with each `<image>` replaced by one `image_token_index` (Qwen: no BOS)."""
    ids: list[int] = []
    for k, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if k:
            ids.append(image_token_index)
        if chunk:
            ids.extend(tokenizer(chunk, add_special_tokens=False)["input_ids"])
    return ids


def conversation_messages(conversations: Any) -> list[tuple[int, str]]:
    """Validate the jsonl `conversations` list and return (role, text) pairs.

    The rules are `vision_tokenizer.data.records.check_conversations` (shared with codebook
    inference); raises `ValueError` with the offending turn's index.
    """
    return [(ROLE_NAMES[speaker], text) for speaker, text in check_conversations(conversations)]


@dataclass(frozen=True)
class SupervisedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def num_images(self) -> int:
        return self.input_ids.count(IMAGE_TOKEN_INDEX)


def tokenize_conversation(
    messages: Sequence[tuple[int, str]], tokenizer: Any, template: ChatTemplate
) -> SupervisedExample:
    """Render `messages` with `template` and label exactly the assistant content + separator."""
    input_ids: list[int] = []
    labels: list[int] = []

    def add(text: str, supervised: bool) -> None:
        piece = tokenizer_image_token(text, tokenizer)
        input_ids.extend(piece)
        if supervised:
            labels.extend(IGNORE_INDEX if i == IMAGE_TOKEN_INDEX else i for i in piece)
        else:
            labels.extend([IGNORE_INDEX] * len(piece))

    add(template.system_turn, False)
    turn_starts = []
    for role, content in messages:
        turn_starts.append(len(input_ids))
        if role == USER:
            add(template.roles[USER] + content + template.sep, False)
        else:
            add(template.roles[ASSISTANT], False)
            add(content + template.sep, True)

    whole = tokenizer_image_token(template.render(messages), tokenizer)
    if whole != input_ids:
        at = next(
            (i for i, (a, b) in enumerate(zip(whole, input_ids)) if a != b), min(len(whole), len(input_ids))
        )
        turn = bisect.bisect_right(turn_starts, at) - 1
        where = "the system turn" if turn < 0 else f"turn {turn}"
        raise ValueError(
            f"tokens merge across a turn boundary in {where} (token {at}); the text tokenises differently "
            "on its own than inside the prompt — e.g. a turn starting with a newline"
        )
    return SupervisedExample(input_ids, labels)
