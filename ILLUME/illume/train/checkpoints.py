"""Crash-proof MLLM checkpoints on top of the transformers Trainer (DeepSpeed included).

The Trainer writes `checkpoint-<step>/` in place, so a kill mid-write leaves a folder that looks
like the newest checkpoint and makes every restart fail (`get_last_checkpoint` picks it). Here:
* `staged_save` makes the Trainer write into `<output_dir>/.staging/checkpoint-<step>/` (every
  rank, so DeepSpeed's per-rank shards too); once all ranks are done, rank 0 fsyncs it, adds the
  `COMPLETE` marker and renames it into place, then applies `save_total_limit`;
* `resume_checkpoint` picks the newest checkpoint that is complete (marker, or for folders
  written before markers existed: a readable `trainer_state.json` and model weights), logs which,
  and moves unusable newer ones (and interrupted staging folders) to `<output_dir>/unusable_checkpoints/`
  (outside the Trainer's `checkpoint-*` rotation) under `<name>.incomplete` / `<name>.corrupt`;
* `rewind_metrics` drops the metrics rows that a killed run logged after that checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers.trainer_utils import rotate_checkpoints
from vision_tokenizer.runtime.atomic import atomic_write_text, fsync_dir, fsync_tree
from vision_tokenizer.runtime.checkpoints import MARKER, CheckpointDir, fault_hook

__all__ = [
    "STAGING_DIR",
    "ASIDE_DIR",
    "checkpoint_dir",
    "validate_checkpoint",
    "resume_checkpoint",
    "staged_save",
    "rewind_metrics",
]

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
ASIDE_DIR = "unusable_checkpoints"
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
)


def checkpoint_dir(output_dir: str | os.PathLike) -> CheckpointDir:
    output_dir = Path(output_dir)
    return CheckpointDir(
        output_dir, prefix="checkpoint-", suffix="", folder=True, aside=output_dir / ASIDE_DIR
    )


def validate_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's trainer state; raises when the folder cannot be resumed from."""
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise ValueError(f"{path} has no trainer_state.json (its write was interrupted)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{state_file} is damaged ({error})") from None
    if not (path / MARKER).is_file() and not any((path / name).is_file() for name in _WEIGHTS):
        raise ValueError(f"{path} has no {MARKER} marker and no model weights")
    return state


def resume_checkpoint(output_dir: str | os.PathLike, set_aside: bool) -> str | None:
    """The newest complete checkpoint folder of `output_dir`, or None for a fresh start.

    `set_aside` (rank 0 only): move unusable newer checkpoints and staging leftovers out of the way.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    store = checkpoint_dir(output_dir)
    staging = output_dir / STAGING_DIR
    if set_aside and staging.is_dir():
        for leftover in sorted(staging.iterdir()):
            logger.warning("%s is a checkpoint whose write was interrupted", leftover)
            store.move_aside(leftover, "incomplete")
    point = store.latest(validate_checkpoint, set_aside=set_aside)
    return None if point is None else str(point.checkpoint.path)


@contextlib.contextmanager
def staged_save(trainer: Any) -> Iterator[None]:
    """Around `Trainer._save_checkpoint`: write into the staging folder, then publish atomically."""
    output_dir = Path(trainer.args.output_dir)
    name = f"checkpoint-{trainer.state.global_step}"
    staging = output_dir / STAGING_DIR / name
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer._get_output_dir = lambda trial=None: str(staging.parent)
    try:
        yield
    finally:
        del trainer._get_output_dir  # back to the class's method
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        fault_hook("written", staging)
        fsync_tree(staging)
        atomic_write_text(staging / MARKER, f"{trainer.state.global_step}\n")
        final = output_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        with contextlib.suppress(OSError):
            staging.parent.rmdir()  # leaves nothing behind once empty
        fsync_dir(output_dir)
        fault_hook("published")
        rotate_checkpoints(
            output_dir=str(output_dir),
            save_total_limit=trainer.args.save_total_limit,
            best_model_checkpoint=trainer.state.best_model_checkpoint,
        )
    trainer.accelerator.wait_for_everyone()


def rewind_metrics(path: str | os.PathLike, step: int) -> int:
    """Drop rows with `"step" > step` (and a torn last line) from a metrics jsonl; returns how many."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        try:
            row = json.loads(line) if line.endswith("\n") else None
        except json.JSONDecodeError:
            row = None
        if row is not None and int(row.get("step", 0)) <= step:
            kept.append(line)
        elif line.strip():
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(kept))
    return dropped
