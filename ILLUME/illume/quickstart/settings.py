"""The settings of `illume quickstart`, read from `configs/quickstart/quickstart.py` plus overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vision_tokenizer.utils.config import load_config

from illume.quickstart.example_data import select_photos
from illume.vocab import RESOLUTION_TAG_SIZES

__all__ = ["REPO_ROOT", "DEFAULT_SETTINGS_FILE", "QuickstartSettings", "load_settings", "fingerprint"]

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_SETTINGS_FILE = REPO_ROOT / "configs" / "quickstart" / "quickstart.py"


@dataclass(frozen=True)
class QuickstartSettings:
    """Sizes, step counts and paths of one quick-start run (see the settings file for each key)."""

    photos: tuple[str, ...] = ()
    photo_size: int = 256
    edits_per_photo: int = 2
    resolution: int = 64
    tokenizer_config: str = "configs/quickstart/dualvitok_quickstart.py"
    tokenizer_steps: int = 500
    bpe_vocab_size: int = 512
    llm: dict[str, Any] = field(default_factory=dict)
    mllm_config: str = "configs/quickstart/illume_quickstart.py"
    mllm_steps: int = 400
    nproc_per_node: int = 1
    understanding_questions: tuple[str, ...] = ()
    max_new_tokens: int = 48
    num_threads: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTION_TAG_SIZES:
            raise ValueError(
                f"resolution must be a resolution-tag size {RESOLUTION_TAG_SIZES}, got {self.resolution}"
            )
        if self.photo_size < self.resolution or self.photo_size % 16:
            raise ValueError(f"photo_size must be a multiple of 16 and >= resolution, got {self.photo_size}")
        for name in ("tokenizer_steps", "mllm_steps", "nproc_per_node", "max_new_tokens", "bpe_vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(select_photos(self.photos)) < 2:
            raise ValueError(
                "photos: give at least two (generated images are compared with the other photos)"
            )
        if not self.understanding_questions:
            raise ValueError("understanding_questions is empty: give at least one question")

    def path(self, relative: str) -> Path:
        """A settings path: absolute as given, otherwise under the repository root."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else REPO_ROOT / candidate

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_settings(
    path: str | Path = DEFAULT_SETTINGS_FILE, overrides: Mapping[str, Any] | None = None
) -> QuickstartSettings:
    """Settings from a config file with overrides (`{"tokenizer_steps": 50, "llm.hidden_size": 64}`).

    Unknown keys are an error, so a typo never silently leaves a default in place.
    """
    cfg = load_config(path, dict(overrides or {})).to_dict()
    known = {f.name for f in dataclasses.fields(QuickstartSettings)}
    unknown = sorted(k for k in cfg if k not in known)
    if unknown:
        raise ValueError(f"{path}: unknown quick-start settings {unknown}; known: {sorted(known)}")
    values = dict(cfg)
    for key in ("photos", "understanding_questions"):
        if key in values:
            values[key] = tuple(values[key])
    return QuickstartSettings(**values)


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able values (what a stage's result depends on)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
