"""Rank-sharded, crash-safe, resumable jsonl output (codebook inference, generation eval, benchmarks).

Every rank appends its finished rows to its own part file `{folder}/{stem}.rank{r}of{W}.jsonl`;
each `append` is one write followed by flush + fsync, so a kill loses at most the rows of the
batch being written, and a line cut short is recognised (no trailing newline) and ignored. On a
restart the rows already done are the keys found in *all* parts of the stem, whatever world
size wrote them, so a job may resume on a different number of ranks. When every expected key
is present, rank 0 merges the parts, ordered by key, into one file published atomically.

    writer = ShardedJsonlWriter(folder, "captions", rank=ctx.rank, world_size=ctx.world_size)
    todo = [item for item in items[ctx.rank :: ctx.world_size] if item.id not in writer.done_keys()]
    for batch in batches(todo):
        writer.append([{"id": item.id, ...} for item in batch])
    ctx.barrier()
    if ctx.is_main:
        writer.merge(expected={item.id for item in items})
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vision_tokenizer.runtime.atomic import atomic_write_jsonl, fsync_dir, jsonl_line

__all__ = ["ShardedJsonlWriter", "read_complete_rows"]


def read_complete_rows(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The rows of a part file and the byte length of its complete lines.

    A final line without its newline is the write a crash interrupted and is left out; a
    complete line that is not JSON means the file was damaged otherwise, reported as file:line.
    """
    rows: list[dict[str, Any]] = []
    good = 0
    if not path.exists():
        return rows, good
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break
            good += len(line)
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"{path}:{number}: damaged part file line ({error})") from None
    return rows, good


class ShardedJsonlWriter:
    """One rank's view of the sharded output `stem` in `folder`; see the module docstring.

    Args:
        folder: where the parts (and, by default, the merged `{stem}.jsonl`) live.
        stem: the output's name without `.jsonl`.
        rank, world_size: this process's place (`DistContext.rank` / `.world_size`).
        key: the field that identifies a row (unique over the whole job).
        resume: keep earlier parts (default); False deletes this rank's part (and rank 0 also
            those written with another world size) so the job starts over.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        stem: str,
        *,
        rank: int,
        world_size: int,
        key: str = "id",
        resume: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.stem = stem
        self.rank = rank
        self.world_size = world_size
        self.key = key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.part = self.part_path(rank, world_size)
        self._pattern = re.compile(re.escape(stem) + r"\.rank(\d+)of(\d+)\.jsonl$")
        if not resume:
            for path in self.parts():
                if path == self.part or (rank == 0 and not path.name.endswith(f"of{world_size}.jsonl")):
                    path.unlink(missing_ok=True)
        else:
            _, good = read_complete_rows(self.part)
            if self.part.exists() and self.part.stat().st_size != good:
                with open(self.part, "r+b") as handle:
                    handle.truncate(good)

    def part_path(self, rank: int, world_size: int) -> Path:
        return self.folder / f"{self.stem}.rank{rank}of{world_size}.jsonl"

    @property
    def merged_path(self) -> Path:
        return self.folder / f"{self.stem}.jsonl"

    def parts(self) -> list[Path]:
        """Every part of this stem, from any rank and world size."""
        return sorted(
            p
            for p in self.folder.glob(f"{glob.escape(self.stem)}.rank*of*.jsonl")
            if self._pattern.match(p.name)
        )

    def rows(self) -> dict[Hashable, dict[str, Any]]:
        """All complete rows of all parts by key (the first occurrence of a key wins)."""
        found: dict[Hashable, dict[str, Any]] = {}
        for path in self.parts():
            for row in read_complete_rows(path)[0]:
                found.setdefault(row[self.key], row)
        return found

    def done_keys(self) -> set[Hashable]:
        return set(self.rows())

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows to this rank's part as one durable write."""
        if not rows:
            return
        if any(self.key not in row for row in rows):
            raise KeyError(f"rows written to {self.part} need a {self.key!r} field")
        existed = self.part.exists()
        with open(self.part, "ab") as handle:
            handle.write("".join(jsonl_line(dict(row)) for row in rows).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        if not existed:
            fsync_dir(self.folder)

    def merge(
        self,
        expected: Collection[Hashable] | None = None,
        *,
        write: Callable[[list[dict[str, Any]]], None] | None = None,
        remove_parts: bool = False,
    ) -> bool:
        """Rank 0: publish the rows ordered by key once all `expected` keys are done.

        `write` receives the ordered rows (default: atomically written to `merged_path`).
        Returns False, writing nothing, while keys are missing.
        """
        rows = self.rows()
        if expected is not None and not set(expected) <= set(rows):
            return False
        ordered = [rows[key] for key in sorted(rows)]
        if write is None:
            atomic_write_jsonl(self.merged_path, ordered)
        else:
            write(ordered)
        if remove_parts:
            for path in self.parts():
                path.unlink(missing_ok=True)
        return True
