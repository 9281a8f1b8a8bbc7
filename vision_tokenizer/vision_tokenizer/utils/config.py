"""Config files: mmengine Python configs with `_base_` inheritance and `--a.b=value` overrides.

Both packages read their configs through this module, so the official config files and the
command-line override syntax behave identically for the tokenizer and for the MLLM. Override
values are parsed as Python literals (never executed), so user strings cannot run code.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Sequence
from typing import Any

from mmengine.config import Config

__all__ = ["Config", "load_config", "parse_override_value", "split_overrides", "apply_overrides"]

_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_override_value(text: str) -> Any:
    """Turn the text after `=` into a value: a Python literal, a bool/None word, or the raw string."""
    lowered = text.strip().lower()
    if lowered in _WORDS:
        return _WORDS[lowered]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_overrides(argv: Iterable[str]) -> tuple[list[str], dict[str, Any]]:
    """Separate `--a.b=value` / `--a.b value` items from the other command-line arguments.

    Only dotted keys count as config overrides (`--model_args.version=qwen2`), so regular flags
    such as `--local_rank 0` stay with the caller's own parser.
    """
    rest: list[str] = []
    overrides: dict[str, Any] = {}
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        key = item[2:].split("=", 1)[0] if item.startswith("--") else ""
        if "." in key:
            if "=" in item:
                overrides[key] = parse_override_value(item.split("=", 1)[1])
            elif i + 1 < len(items):
                overrides[key] = parse_override_value(items[i + 1])
                i += 1
            else:
                raise ValueError(f"config override {item!r} has no value")
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted keys in place; a key whose parent does not exist is an error (typo guard)."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node: Any = cfg
        walked = []
        for part in parents:
            walked.append(part)
            if part not in node:
                raise KeyError(f"config has no key {'.'.join(walked)!r} (override {dotted!r})")
            node = node[part]
        node[leaf] = value
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] | dict[str, Any] = ()) -> Config:
    """Read a Python config file (with `_base_` inheritance) and apply command-line overrides."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    cfg = Config.fromfile(path)
    if not isinstance(overrides, dict):
        rest, overrides = split_overrides(overrides)
        if rest:
            raise ValueError(f"not config overrides (expected --a.b=value): {rest}")
    return apply_overrides(cfg, overrides)
