"""The meta-data config json shared by codebook inference and MLLM training (SPEC-mllm C8).

It maps dataset names to folders::

    {"examples_generation": {"root": ..., "image_dir": ..., "annotation_dir": ...,
                             "tokenizer_inference": true}, ...}

Relative folders are looked up against, in this order: the json file's own directory; the
official working directory `ILLUME/` of the checkout the json sits in (the official
`examples_meta_data_config.json` is written relative to it); the current directory. A dataset
whose `image_dir` and `annotation_dir` exist under none of them is an error listing what was
tried. Datasets with `tokenizer_inference: true` are run through codebook inference, whose
output under `root/<codebook_dir>` is what MLLM training reads for them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DatasetMeta", "load_meta_data_config"]

_META_KEYS = ("root", "image_dir", "annotation_dir", "tokenizer_inference")


@dataclass(frozen=True)
class DatasetMeta:
    """One entry of a meta-data config, with absolute folders."""

    name: str
    root: Path
    image_dir: Path
    annotation_dir: Path
    tokenizer_inference: bool

    def records_dir(self, codebook_dir: str | None) -> Path:
        """Where this dataset's jsonl files live for a group with `codebook_dir`."""
        if self.tokenizer_inference:
            if not codebook_dir:
                raise ValueError(
                    f"dataset {self.name!r} needs codebook inference (tokenizer_inference=true) but its "
                    "data group sets no codebook_dir"
                )
            return self.root / codebook_dir
        return self.annotation_dir


def load_meta_data_config(path: str | os.PathLike) -> dict[str, DatasetMeta]:
    """Read a meta-data config json; missing keys or wrong types raise naming the file and dataset."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"meta-data config not found: {path}")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected an object mapping dataset names to their folders")
    bases = _search_bases(path)
    metas = {}
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: dataset {name!r} must be an object with keys {_META_KEYS}")
        missing = [key for key in _META_KEYS if key not in entry]
        if missing:
            raise ValueError(f"{path}: dataset {name!r} lacks {missing}")
        if not isinstance(entry["tokenizer_inference"], bool):
            raise ValueError(f"{path}: dataset {name!r}: tokenizer_inference must be true or false")
        for key in ("root", "image_dir", "annotation_dir"):
            if not isinstance(entry[key], str):
                raise ValueError(f"{path}: dataset {name!r}: {key} must be a path string")
        base = _base_for(path, name, entry, bases)
        folders = {key: (base / entry[key]).resolve() for key in ("root", "image_dir", "annotation_dir")}
        metas[name] = DatasetMeta(name=name, tokenizer_inference=entry["tokenizer_inference"], **folders)
    return metas


def _search_bases(path: Path) -> list[Path]:
    """The json's folder, the official `ILLUME/` working directory beside its `configs/`, the cwd."""
    bases = [path.parent.resolve()]
    for parent in path.resolve().parents:
        if parent.name == "configs":
            bases.append(parent.parent / "ILLUME")
            break
    bases.append(Path.cwd())
    return list(dict.fromkeys(bases))


def _base_for(path: Path, name: str, entry: dict, bases: list[Path]) -> Path:
    for base in bases:
        if any((base / entry[key]).exists() for key in ("image_dir", "annotation_dir")):
            return base
    tried = ", ".join(str(base / entry["annotation_dir"]) for base in bases)
    raise FileNotFoundError(f"{path}: dataset {name!r}: image_dir / annotation_dir not found; tried {tried}")
