"""Config files: mmengine Python configs with `_base_` inheritance and `--a.b=value` overrides.

Both packages read their configs through this module, so the official config files and the
command-line override syntax behave identically for the tokenizer and for the MLLM. Override
values are parsed as Python literals (never executed), so user strings cannot run code.
"""

from __future__ import annotations

import ast
import difflib
import os
from collections.abc import Iterable, Sequence
from typing import Any

from mmengine.config import Config

from vision_tokenizer.utils.user_errors import UserError

__all__ = ["Config", "ConfigError", "load_config", "parse_override_value", "split_overrides", "apply_overrides"]


class ConfigError(UserError, KeyError, ValueError):
    """A config path or override the user gave that does not fit the config (one line on the CLI)."""


class ConfigFileNotFoundError(UserError, FileNotFoundError):
    """The config file named by the user does not exist."""


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
                raise ConfigError(f"config override {item!r} has no value")
        else:
            rest.append(item)
        i += 1
    return rest, overrides


def _missing_key(node: Any, key: str, path: str, dotted: str) -> ConfigError:
    close = difflib.get_close_matches(key, [str(k) for k in node.keys()], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"config has no key {path!r} (override {dotted!r}){hint}")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted keys in place. Every key on the path must already exist, so a typo fails loudly
    instead of silently adding an unused key (declare optional keys in the config, even as None)."""
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node: Any = cfg
        for depth, part in enumerate(parts):
            if not hasattr(node, "keys") or part not in node:
                raise _missing_key(node if hasattr(node, "keys") else {}, part, ".".join(parts[: depth + 1]), dotted)
            if depth < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = value
    return cfg


def load_config(path: str | os.PathLike, overrides: Sequence[str] | dict[str, Any] = ()) -> Config:
    """Read a Python config file (with `_base_` inheritance) and apply command-line overrides."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigFileNotFoundError(f"config file not found: {path}")
    cfg = Config.fromfile(path)
    if not isinstance(overrides, dict):
        rest, overrides = split_overrides(overrides)
        if rest:
            raise ConfigError(f"not config overrides (expected --a.b=value): {rest}")
    return apply_overrides(cfg, overrides)
