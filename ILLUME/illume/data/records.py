"""Training records on disk: the meta-data config json and the jsonl annotation files it points to.

A meta-data config maps dataset names to folders (SPEC-mllm C8; read by
`vision_tokenizer.data.meta_config`, which codebook inference shares)::

    {"examples_generation": {"root": ..., "image_dir": ..., "annotation_dir": ...,
                             "tokenizer_inference": true}, ...}

Relative folders are resolved against the json file's own directory, never the working
directory. Generation and editing datasets (`tokenizer_inference: true`) are read from
`root/codebook_dir` (the codebook-inference output); the others from `annotation_dir`.
Records stay as raw bytes until used, so millions of lines cost little memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from vision_tokenizer.data.meta_config import DatasetMeta, load_meta_data_config

from illume.data.errors import MalformedRecord, RecordLocation

__all__ = ["DatasetMeta", "load_meta_data_config", "annotation_files", "RecordSource", "parse_record"]

_ANNOTATION_SUFFIXES = (".jsonl", ".json")


def annotation_files(folder: Path) -> list[Path]:
    """All `*.jsonl` / `*.json` files below `folder`, recursively, in sorted order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"annotation folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _ANNOTATION_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no .jsonl/.json annotation files under {folder}")
    return files


def _file_records(path: Path) -> Iterator[tuple[RecordLocation, bytes]]:
    if path.suffix == ".jsonl":
        with open(path, "rb") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield RecordLocation(str(path), number), line
        return
    try:
        items = json.loads(path.read_bytes())
    except json.JSONDecodeError as err:
        raise MalformedRecord(RecordLocation(str(path), err.lineno), f"not valid JSON ({err.msg})") from None
    if not isinstance(items, list):
        raise MalformedRecord(
            RecordLocation(str(path), 1), "a .json annotation file must hold a list of records"
        )
    for index, item in enumerate(items):
        yield RecordLocation(str(path), index, is_item_index=True), json.dumps(item).encode()


class RecordSource:
    """The raw records of one dataset, in file order, each with its location."""

    def __init__(self, files: list[Path], sample_num: int = 0) -> None:
        self.locations: list[RecordLocation] = []
        self._raw: list[bytes] = []
        for path in files:
            for location, raw in _file_records(path):
                if 0 < sample_num <= len(self._raw):
                    return
                self.locations.append(location)
                self._raw.append(raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, index: int) -> tuple[RecordLocation, dict[str, Any]]:
        location = self.locations[index]
        return location, parse_record(self._raw[index], location)


def parse_record(raw: bytes, location: RecordLocation) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as err:
        raise MalformedRecord(location, f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise MalformedRecord(location, f"a record must be a JSON object, got {type(record).__name__}")
    return record


def check_keys(record: Mapping[str, Any], location: RecordLocation, required: tuple[str, ...]) -> None:
    missing = [key for key in required if key not in record]
    if missing:
        raise MalformedRecord(location, f"record lacks {missing}")
