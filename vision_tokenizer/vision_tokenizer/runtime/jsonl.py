"""The one jsonl reader of the project (codebook inference, MLLM training, evaluation inputs).

Every annotation file is read the same way: `.jsonl` one record per non-blank line, `.json` a
list of records; UTF-8, a byte-order mark tolerated; a line that is not UTF-8 or not JSON is
reported with its `file:line` (`file[item]` for a `.json` list) and the policy decides: `raise`
(the default) stops at it, `skip` leaves it out, counts it and `ReadCounts.summary` reports it
at the end. Lines stay bytes until `decode` so that large corpora cost little memory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vision_tokenizer.utils.user_errors import UserError

__all__ = ["POLICIES", "Location", "RecordError", "ReadCounts", "iter_raw", "decode", "read_records"]

logger = logging.getLogger(__name__)

POLICIES = ("raise", "skip")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Location:
    """A record's origin: file and 1-based line (jsonl), or 0-based item index of a `.json` list."""

    path: str
    line: int
    is_item: bool = False

    def __str__(self) -> str:
        return f"{self.path}[{self.line}]" if self.is_item else f"{self.path}:{self.line}"


class RecordError(UserError, ValueError):
    """A record that cannot be used; the message starts with its location."""

    def __init__(self, location: Location | str, reason: str) -> None:
        self.location = str(location)
        self.reason = reason
        super().__init__(f"{self.location}: {reason}")


@dataclass
class ReadCounts:
    """Records seen, used and skipped (with where and why), for the end-of-reading summary."""

    seen: int = 0
    skipped: list[RecordError] = field(default_factory=list)

    @property
    def used(self) -> int:
        return self.seen - len(self.skipped)

    def skip(self, error: RecordError) -> None:
        self.skipped.append(error)
        logger.warning("skipped %s", error)

    def summary(self, what: str) -> str:
        return f"{what}: {self.seen} records read, {self.used} used, {len(self.skipped)} skipped"


def iter_raw(path: str | os.PathLike) -> Iterator[tuple[Location, bytes]]:
    """(location, raw bytes) of every record of a `.jsonl` / `.json` file, in file order."""
    path = Path(path)
    name = str(path)
    if path.suffix != ".json":
        with open(path, "rb") as lines:
            for number, line in enumerate(lines, start=1):
                if number == 1 and line.startswith(_BOM):
                    line = line[len(_BOM) :]
                if line.strip():
                    yield Location(name, number), line
        return
    data = path.read_bytes().removeprefix(_BOM)
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise RecordError(
            Location(name, line), f"not valid UTF-8 ({error.reason} at byte {error.start})"
        ) from None
    except json.JSONDecodeError as error:
        raise RecordError(Location(name, error.lineno), f"not valid JSON ({error.msg})") from None
    if not isinstance(items, list):
        raise RecordError(Location(name, 1), "a .json annotation file must hold a list of records")
    for index, item in enumerate(items):
        yield Location(name, index, is_item=True), json.dumps(item, ensure_ascii=False).encode("utf-8")


def decode(raw: bytes, location: Location) -> Any:
    """The JSON value of one raw record; `RecordError` names the location and the fault."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecordError(
            location, f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at byte {error.start} of the line)"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(location, f"not valid JSON ({error.msg} at column {error.colno})") from None


def read_records(
    path: str | os.PathLike, policy: str = "raise", counts: ReadCounts | None = None
) -> Iterator[tuple[Location, Any]]:
    """Decoded records of a file; undecodable ones raise (`raise`) or are counted and left out (`skip`).

    A `.json` file that is not a readable list is one error for the whole file.
    """
    if policy not in POLICIES:
        raise ValueError(f"record error policy must be one of {POLICIES}, got {policy!r}")
    counts = counts if counts is not None else ReadCounts()
    entries = iter_raw(path)
    while True:
        try:
            location, raw = next(entries)
        except StopIteration:
            return
        except RecordError as error:  # a .json file that is not a readable list
            if policy == "raise":
                raise
            counts.seen += 1
            counts.skip(error)
            return
        counts.seen += 1
        try:
            value = decode(raw, location)
        except RecordError as error:
            if policy == "raise":
                raise
            counts.skip(error)
            continue
        yield location, value
