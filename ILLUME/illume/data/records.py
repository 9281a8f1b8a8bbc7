"""Training records on disk: the meta-data config json and the jsonl annotation files it points to.

A meta-data config maps dataset names to folders (SPEC-mllm C8; read by
`vision_tokenizer.data.meta_config`, which codebook inference shares)::

    {"examples_generation": {"root": ..., "image_dir": ..., "annotation_dir": ...,
                             "tokenizer_inference": true}, ...}

Relative folders are resolved against the json file's own directory, never the working
directory. Generation and editing datasets (`tokenizer_inference: true`) are read from
`root/codebook_dir` (the codebook-inference output); the others from `annotation_dir`.
Records stay as raw bytes until used, so millions of lines cost little memory; files are read
by the project's one jsonl reader (`vision_tokenizer.runtime.jsonl`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vision_tokenizer.data.meta_config import DatasetMeta, load_meta_data_config
from vision_tokenizer.runtime.jsonl import RecordError, decode, iter_raw

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
    """Raw records of one file (`vision_tokenizer.runtime.jsonl`: BOM tolerated, decoded later)."""
    try:
        yield from iter_raw(path)
    except RecordError as err:  # a .json file that is not a readable list
        raise MalformedRecord(err.location, err.reason) from None


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
    """The record of one raw line; undecodable UTF-8 or JSON is a `MalformedRecord` at its file:line."""
    try:
        record = decode(raw, location)
    except RecordError as err:
        raise MalformedRecord(location, err.reason) from None
    if not isinstance(record, dict):
        raise MalformedRecord(location, f"a record must be a JSON object, got {type(record).__name__}")
    return record
