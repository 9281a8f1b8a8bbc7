"""The checkpoint's `generation_config.json` defaults, applied the way transformers' `generate` does.

The official inference calls HF `generate`, which merges the checkpoint's generation config (the
extension script saves Qwen2.5-Instruct's: `repetition_penalty` 1.05, sampling with T 0.7, top-k
20, top-p 0.8) under the caller's arguments and runs the penalty before the official custom
processors — in understanding and in image generation. `GenerationDefaults` is that merge for our
engine: a value the caller gives wins; otherwise the file's value; otherwise transformers' own
default (which is also what `IllumePipeline` used before it read the file). The file is JSON:
read as data, never executed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["GENERATION_CONFIG_FILE", "HF_DEFAULTS", "GenerationDefaults"]

GENERATION_CONFIG_FILE = "generation_config.json"
# transformers' `GenerationConfig` defaults for the keys we take over.
HF_DEFAULTS: dict[str, Any] = {
    "do_sample": False,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
}


@dataclass(frozen=True)
class GenerationDefaults:
    """The sampling keys a checkpoint's generation config sets (None: not set there)."""

    do_sample: bool | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, enabled: bool = True) -> GenerationDefaults:
        """Read `folder/generation_config.json` (none there, or `enabled=False`: no defaults)."""
        path = Path(folder) / GENERATION_CONFIG_FILE
        if not enabled or not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ValueError(f"invalid JSON in {path}: {error}") from error
        if not isinstance(values, dict):
            raise ValueError(f"{path} holds a {type(values).__name__}, not a JSON object")
        return cls(**{f.name: values.get(f.name) for f in fields(cls)})

    def resolve(self, **given: Any) -> dict[str, Any]:
        """`given` (None = not given by the caller) filled from the file, then transformers' defaults."""
        unknown = sorted(set(given) - set(HF_DEFAULTS))
        if unknown:
            raise TypeError(f"not generation-config keys: {unknown}; known: {sorted(HF_DEFAULTS)}")
        resolved = {}
        for key, value in given.items():
            if value is None:
                value = getattr(self, key)
            resolved[key] = HF_DEFAULTS[key] if value is None else value
        return resolved
