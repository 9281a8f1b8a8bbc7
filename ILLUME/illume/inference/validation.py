"""Checks of every inference knob, made where a request enters (pipeline, CLI, demo).

Each check is a small pure function that returns the value (normalised to its type) or raises
`InvalidSetting` with one line naming the setting and what is allowed, so the CLI can print it
as an error (exit 2) and the demo can show it. `name` lets a caller use its own spelling of the
setting (`--top-k` on the command line, `top_k` in Python).

Resolutions: the model writes `<height_H><width_W>` before an image, so only sizes whose two
tags exist can be generated, and of those only the shapes ILLUME+ is prepared for: the 11
aspect-ratio anchors, the shapes of the ViT resize table (`RESOLUTION_MAPPING`) and squares (the
official `fixed` evaluation setting; the quick-start model is trained on one, 64x64).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from vision_tokenizer.models.vit_input import RESOLUTION_MAPPING
from vision_tokenizer.utils.user_errors import UserError

from illume.vocab import RATIOS, RESOLUTION_TAG_SIZES

__all__ = [
    "InvalidSetting",
    "ContextLimits",
    "supported_resolutions",
    "format_resolution",
    "parse_resolution",
    "check_resolution",
    "check_top_k",
    "check_top_p",
    "check_temperature",
    "check_count",
    "check_sampling",
    "check_prompt_length",
]


class InvalidSetting(UserError, ValueError):
    """An inference setting outside what the model supports; the message says what is allowed."""


def supported_resolutions(tag_sizes: Iterable[int] = RESOLUTION_TAG_SIZES) -> tuple[tuple[int, int], ...]:
    """(H, W) sizes that can be generated with resolution tags of `tag_sizes`: squares, then shapes."""
    sizes = {int(s) for s in tag_sizes}
    squares = [(s, s) for s in sorted(sizes)]
    shapes = [(h, w) for h, w in dict.fromkeys([*RATIOS, *RESOLUTION_MAPPING]) if h != w]
    return tuple(size for size in (*squares, *shapes) if size[0] in sizes and size[1] in sizes)


def format_resolution(size: Sequence[int]) -> str:
    return f"{size[0]}x{size[1]}"


def parse_resolution(text: str, name: str = "resolution") -> tuple[int, int]:
    """'HxW' (or 'H*W', or one number for a square) → (H, W); the shape is checked by `check_resolution`."""
    parts = text.strip().lower().replace("*", "x").split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise InvalidSetting(f"{name} must look like HxW (e.g. 512x512), got {text!r}")
    return int(parts[0]), int(parts[1])


def check_resolution(
    size: Sequence[int], allowed: Sequence[tuple[int, int]], name: str = "resolution"
) -> tuple[int, int]:
    """`size` as an (H, W) tuple when it is one of `allowed`, else an error listing them."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InvalidSetting(f"{name} must be (height, width) in pixels, got {size!r}") from None
    if (height, width) not in allowed:
        raise InvalidSetting(
            f"{name} {height}x{width} is not supported; allowed: {', '.join(map(format_resolution, allowed))}"
        )
    return height, width


def _integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidSetting(f"{name} must be an integer, got {value!r}")
    return int(value)


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSetting(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_top_k(value: Any, name: str = "top_k") -> int:
    """top-k ≥ 0 (0 keeps every token)."""
    value = _integer(value, name)
    if value < 0:
        raise InvalidSetting(f"{name} must be >= 0 (0 switches top-k off), got {value}")
    return value


def check_top_p(value: Any, name: str = "top_p") -> float:
    """0 < top-p ≤ 1 (1 keeps every token)."""
    value = _real(value, name)
    if not 0 < value <= 1:
        raise InvalidSetting(f"{name} must lie in (0, 1] (1 switches top-p off), got {value:g}")
    return value


def check_temperature(value: Any, name: str = "temperature", greedy_zero: bool = True) -> float:
    """temperature ≥ 0, where 0 means greedy decoding; > 0 where a phase cannot be greedy on its own."""
    value = _real(value, name)
    if value < 0 or (value == 0 and not greedy_zero):
        bound = ">= 0 (0: greedy)" if greedy_zero else "> 0"
        raise InvalidSetting(f"{name} must be {bound}, got {value:g}")
    return value


def check_count(value: Any, name: str) -> int:
    """A count that must be at least 1 (images, new tokens, batch size)."""
    value = _integer(value, name)
    if value < 1:
        raise InvalidSetting(f"{name} must be >= 1, got {value}")
    return value


_LEVEL_CHECKS = {"temperature": check_temperature, "top_k": check_top_k, "top_p": check_top_p}


def check_sampling(
    temperature: Any, top_k: Any, top_p: Any, levels: dict[str, Any] | None = None, prefix: str = ""
) -> dict[str, Any]:
    """Checked text values plus any `semantic_*` / `pixel_*` overrides in `levels`, as one dict.

    `prefix` turns names into flags (`"--"` with dashes) for messages. Per-level temperatures must
    be > 0: only the whole decoding can be greedy.
    """

    def label(key: str) -> str:
        return prefix + (key.replace("_", "-") if prefix else key)

    checked = {
        "temperature": check_temperature(temperature, label("temperature")),
        "top_k": check_top_k(top_k, label("top_k")),
        "top_p": check_top_p(top_p, label("top_p")),
    }
    for key, value in (levels or {}).items():
        level, _, knob = key.partition("_")
        if value is None or level not in ("semantic", "pixel") or knob not in _LEVEL_CHECKS:
            continue
        if knob == "temperature":
            checked[key] = check_temperature(value, label(key), greedy_zero=False)
        else:
            checked[key] = _LEVEL_CHECKS[knob](value, label(key))
    return checked


@dataclass(frozen=True)
class ContextLimits:
    """How long a model's sequences may be.

    `prompt`: the longest prompt (image features included) the model takes before it truncates
    (`tokenizer_model_max_length`); `total`: prompt plus generated tokens (`max_position_embeddings`).
    """

    prompt: int | None
    total: int | None

    @classmethod
    def from_config(cls, config: Any) -> ContextLimits:
        prompt = getattr(config, "tokenizer_model_max_length", None)
        total = getattr(config, "max_position_embeddings", None)
        return cls(None if prompt is None else int(prompt), None if total is None else int(total))


def check_prompt_length(length: int, new_tokens: int, limits: ContextLimits, what: str = "prompt") -> int:
    """The prompt must fit the model untruncated and leave room for `new_tokens` (e.g. the image block)."""
    if limits.prompt is not None and length > limits.prompt:
        raise InvalidSetting(
            f"the {what} is {length} tokens long; the model takes at most {limits.prompt} (shorten it)"
        )
    if limits.total is not None and length + new_tokens > limits.total:
        raise InvalidSetting(
            f"the {what} is {length} tokens long and {new_tokens} more are to be generated; the model's "
            f"context is {limits.total} tokens (shorten the {what} or generate fewer tokens)"
        )
    return length
