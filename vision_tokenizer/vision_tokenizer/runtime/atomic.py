"""Durable publication of files and folders: write under a temporary name, fsync, rename.

A reader (or a resumed job) then sees either the previous version or the complete new one,
never a prefix, even after a power loss: the data is fsynced before the rename and the
directory entry after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

__all__ = ["fsync_dir", "fsync_tree", "atomic_write", "atomic_write_text", "atomic_write_jsonl", "jsonl_line"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Persist a directory's entries (renames, new files); a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder below `root` (before a staged folder is renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(folder)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call `write(handle)` on `path.tmp`, fsync it and rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def jsonl_line(row: Any) -> str:
    """One jsonl line (UTF-8 kept as is, newline included)."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    atomic_write_text(path, "".join(jsonl_line(row) for row in rows))
