"""Malformed training records: where they are, why they are rejected, and what to do about them.

The official loader caught every exception and silently trained on a random other sample
instead (SPEC §F). Here every rejected record carries its `file:line` and a reason, and a
:class:`RecordErrorPolicy` decides between stopping the run (`raise`, the default) and leaving
the record out while appending it to a JSON-lines report (`skip`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from vision_tokenizer.runtime.jsonl import POLICIES, RecordError
from vision_tokenizer.runtime.jsonl import Location as RecordLocation

__all__ = ["RecordLocation", "MalformedRecord", "RecordErrorPolicy", "ERROR_POLICIES"]

logger = logging.getLogger(__name__)

ERROR_POLICIES = POLICIES


class MalformedRecord(RecordError):
    """A record that cannot become a training sample; the message starts with `file:line`."""


class RecordErrorPolicy:
    """`raise`: stop at the first malformed record. `skip`: drop it and log it to `report_path`.

    The report has one JSON object per line (`location`, `dataset`, `reason`); each line is a
    single append so that ranks and data-loader workers may share the file.
    """

    def __init__(self, mode: str = "raise", report_path: str | os.PathLike | None = None) -> None:
        if mode not in ERROR_POLICIES:
            raise ValueError(f"record error policy must be one of {ERROR_POLICIES}, got {mode!r}")
        if mode == "skip" and report_path is None:
            raise ValueError("record error policy 'skip' needs a report_path to list the skipped records")
        self.mode = mode
        self.report_path = Path(report_path) if report_path is not None else None
        self.skipped = 0

    @property
    def skips(self) -> bool:
        return self.mode == "skip"

    def handle(self, error: MalformedRecord, dataset: str, shared: bool = False) -> None:
        """Raise `error`, or count it and record it in the report when skipping.

        `shared`: every rank meets this record (the validation before training), so only rank 0
        reports it; the report then lists each skipped record once.
        """
        if not self.skips:
            raise error
        self.skipped += 1
        if shared and int(os.environ.get("RANK", "0")) != 0:
            return
        assert self.report_path is not None
        self.report_path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"location": error.location, "dataset": dataset, "reason": error.reason}) + "\n"
        with open(self.report_path, "a", encoding="utf-8") as report:
            report.write(line)
        logger.warning("skipped malformed record %s (%s): %s", error.location, dataset, error.reason)

    def summary(self) -> str:
        return f"{self.skipped} malformed record(s) skipped by this process; all are listed in {self.report_path}"
