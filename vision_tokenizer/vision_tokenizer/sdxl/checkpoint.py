"""Training checkpoints: a loadable decoder folder plus what an exact resume needs.

Layout of `<output_dir>/checkpoints/checkpoint-<step>/`:

    model_index.json, unet/, vae/, scheduler/   DualViTokSDXLDecoderPipeline.from_pretrained(folder)
                                                (unet/ holds the EMA weights when EMA is on)
    trainer/state.pt                            step, data position, optimizer, LR schedule, EMA counters
    trainer/unet_raw.safetensors                the non-averaged weights (only with EMA)
    trainer/rng_rank<r>.pt                      every rank's random generators

A checkpoint is written into `checkpoint-<step>.tmp` and renamed when complete, so a crash never
leaves a half-written folder that `latest` would pick up.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TRAINER_DIR",
    "checkpoint_path",
    "staging_path",
    "list_checkpoints",
    "resolve_resume",
    "publish_checkpoint",
    "load_trainer_file",
]

TRAINER_DIR = "trainer"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"checkpoint-{step:07d}"


def staging_path(final: Path) -> Path:
    return final.with_name(final.name + ".tmp")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Completed checkpoints, oldest first (staging folders are ignored)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> Path | None:
    """`None` -> fresh start; "latest" -> newest checkpoint if any; otherwise a folder that must exist."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / TRAINER_DIR / "state.pt").is_file():
        raise FileNotFoundError(f"train.resume={resume!r} is not a training checkpoint (no {TRAINER_DIR}/state.pt)")
    return path


def publish_checkpoint(staging: Path, final: Path, keep: int | None) -> None:
    """Rename the finished staging folder into place, then drop the oldest beyond `keep`."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    if keep is not None:
        for old in list_checkpoints(final.parent.parent)[:-keep]:
            shutil.rmtree(old)


def load_trainer_file(checkpoint: Path, name: str) -> Any:
    """A `trainer/` file of a checkpoint, loaded without executing pickled code."""
    path = checkpoint / TRAINER_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} lacks {TRAINER_DIR}/{name}")
    return torch.load(path, map_location="cpu", weights_only=True)
