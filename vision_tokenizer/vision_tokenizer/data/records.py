"""The ILLUME+ annotation record, checked once for codebook inference and MLLM training alike.

A record is a JSON object with `conversations` (turns `{"from": "human"|"gpt", "value": str}`,
starting with a human turn and alternating, no empty gpt turn) and `images` (a list of file
names, or one file name as a string), with exactly one `<image>` marker per image. Codebook
inference rejects what training would reject, before encoding anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["IMAGE_MARKER", "SPEAKERS", "record_images", "check_conversations", "check_record"]

IMAGE_MARKER = "<image>"
SPEAKERS = ("human", "gpt")  # turn k must be SPEAKERS[k % 2]


def record_images(record: Mapping[str, Any]) -> list[str]:
    """The record's image file names: a list, a single string as a one-element list, none as []."""
    images = record.get("images", [])
    if isinstance(images, str):
        return [images]
    if not isinstance(images, list) or not all(isinstance(name, str) for name in images):
        raise ValueError("'images' must be a file name or a list of file names")
    return list(images)


def check_conversations(conversations: Any) -> list[tuple[str, str]]:
    """(speaker, text) of each turn; `ValueError` naming the offending turn otherwise."""
    if not isinstance(conversations, list) or not conversations:
        raise ValueError("'conversations' must be a non-empty list of turns")
    turns = []
    for k, turn in enumerate(conversations):
        if not isinstance(turn, dict) or not {"from", "value"} <= set(turn):
            raise ValueError(f"turn {k} must be an object with 'from' and 'value', got {turn!r:.80}")
        speaker, value = turn["from"], turn["value"]
        if speaker not in SPEAKERS:
            raise ValueError(f"turn {k}: 'from' must be one of {sorted(SPEAKERS)}, got {speaker!r}")
        if not isinstance(value, str):
            raise ValueError(f"turn {k}: 'value' must be a string, got {type(value).__name__}")
        if speaker != SPEAKERS[k % 2]:
            raise ValueError(
                f"turn {k} is {speaker!r} but turns must alternate starting with human "
                f"(expected {SPEAKERS[k % 2]!r})"
            )
        if speaker == "gpt" and not value.strip():
            raise ValueError(f"turn {k}: empty assistant turn (nothing to learn)")
        turns.append((speaker, value))
    return turns


def check_record(record: Any) -> tuple[list[str], list[tuple[str, str]]]:
    """Images and turns of a record whose structure training accepts; `ValueError` otherwise."""
    if not isinstance(record, dict):
        raise ValueError(f"a record must be a JSON object, got {type(record).__name__}")
    if "conversations" not in record:
        raise ValueError("record lacks 'conversations'")
    images = record_images(record)
    turns = check_conversations(record["conversations"])
    markers = sum(text.count(IMAGE_MARKER) for _, text in turns)
    if markers != len(images):
        raise ValueError(f"{markers} {IMAGE_MARKER} marker(s) but {len(images)} image(s)")
    return images, turns
