"""Resumable stages: each stage owns a folder, a fingerprint of its inputs and a result record.

A finished stage leaves `<out>/<stage>/stage.json` (fingerprint, run id, seconds, record).
Re-running reuses it when the fingerprint still matches. Fingerprints chain — each includes the
fingerprint and run id of the stage before — so changing a setting, or re-doing a stage, re-runs
that stage and every later one.
A stage that was interrupted keeps its folder (same fingerprint) and is told to resume; a stage
whose inputs changed starts from an empty folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from illume.quickstart.settings import fingerprint

__all__ = ["STAGE_FILE", "StageContext", "StageRunner"]

logger = logging.getLogger(__name__)

STAGE_FILE = "stage.json"
_FINGERPRINT_FILE = ".fingerprint"


@dataclass(frozen=True)
class StageContext:
    """What a stage function gets: its folder, and whether it continues an interrupted attempt."""

    directory: Path
    resume: bool


class StageRunner:
    """Runs named stages in order below `out_dir`; `redo` names stages to run again regardless."""

    def __init__(self, out_dir: str | os.PathLike, stages: Sequence[str], redo: Sequence[str] = ()) -> None:
        unknown = sorted(set(redo) - set(stages))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {list(stages)}")
        self.out_dir = Path(out_dir)
        self.stages = tuple(stages)
        self.redo = set(redo)
        self.records: dict[str, dict[str, Any]] = {}
        self._chain = ""

    def _read_marker(self, directory: Path) -> dict[str, Any] | None:
        path = directory / STAGE_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            logger.warning("%s is damaged: the stage runs again", path)
            return None

    def run(
        self,
        name: str,
        depends_on: Any,
        function: Callable[[StageContext], dict[str, Any]],
        always: bool = False,
    ) -> dict[str, Any]:
        """Reuse stage `name` if finished with the same inputs, else run `function` and record it.

        `always`: run it even when finished (for cheap stages that summarise the others).
        """
        if name not in self.stages:
            raise ValueError(f"unknown stage {name!r}; stages are {list(self.stages)}")
        position = self.stages.index(name) + 1
        key = fingerprint(self._chain, name, depends_on)
        directory = self.out_dir / name
        marker = self._read_marker(directory)
        forced = always or name in self.redo
        if marker is not None and marker.get("fingerprint") == key and not forced:
            logger.info(
                "[%d/%d] %s: finished earlier, reusing %s", position, len(self.stages), name, directory
            )
            self.records[name] = marker
            self._chain = fingerprint(key, marker.get("run_id"))
            return marker["record"]

        stamp = directory / _FINGERPRINT_FILE
        resume = not forced and stamp.is_file() and stamp.read_text(encoding="utf-8") == key
        if directory.exists() and not resume:
            shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        stamp.write_text(key, encoding="utf-8")
        (directory / STAGE_FILE).unlink(missing_ok=True)
        logger.info("[%d/%d] %s%s", position, len(self.stages), name, " (resuming)" if resume else "")
        start = time.perf_counter()
        record = function(StageContext(directory, resume))
        marker = {
            "fingerprint": key,
            "run_id": uuid.uuid4().hex,
            "seconds": round(time.perf_counter() - start, 2),
            "record": record,
        }
        tmp = directory / (STAGE_FILE + ".tmp")
        tmp.write_text(json.dumps(marker, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, directory / STAGE_FILE)
        logger.info("[%d/%d] %s: done in %.1f s", position, len(self.stages), name, marker["seconds"])
        self.records[name] = marker
        self._chain = fingerprint(key, marker["run_id"])
        return record

    def timings(self) -> dict[str, float]:
        """Seconds each stage took when it last ran (reused stages keep their original time)."""
        return {name: float(self.records[name]["seconds"]) for name in self.stages if name in self.records}
