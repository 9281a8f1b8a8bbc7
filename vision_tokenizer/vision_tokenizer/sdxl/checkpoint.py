"""Decoder training checkpoints: a loadable decoder folder plus what an exact resume needs.

Layout of `<output_dir>/checkpoints/checkpoint-<step>/`:

    model_index.json, unet/, vae/, scheduler/   DualViTokSDXLDecoderPipeline.from_pretrained(folder)
                                                (unet/ holds the EMA weights when EMA is on)
    trainer/state.pt                            step, data position, optimizer, LR schedule, EMA counters
    trainer/unet_raw.safetensors                the non-averaged weights (only with EMA)
    trainer/rng_rank<r>.pt                      every rank's random generators
    COMPLETE                                    written last (see `vision_tokenizer.runtime.checkpoints`)

Writing, publishing, retention and the choice of the checkpoint to resume from are the shared
`CheckpointDir`'s: a folder whose write was interrupted is set aside, never resumed from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vision_tokenizer.runtime.checkpoints import Checkpoint, CheckpointDir, ResumePoint, torch_load

__all__ = ["TRAINER_DIR", "checkpoint_dir", "trainer_state", "resolve_resume", "load_trainer_file"]

TRAINER_DIR = "trainer"


def checkpoint_dir(output_dir: str | os.PathLike, keep: int | None = None) -> CheckpointDir:
    return CheckpointDir(
        Path(output_dir) / "checkpoints", prefix="checkpoint-", suffix="", folder=True, keep=keep
    )


def trainer_state(checkpoint: Path) -> dict[str, Any]:
    """`trainer/state.pt` of a checkpoint; raises when the folder cannot be resumed from."""
    return torch_load(checkpoint / TRAINER_DIR / "state.pt")


def resolve_resume(output_dir: str | os.PathLike, resume: str | None, set_aside: bool) -> ResumePoint | None:
    """`None` -> fresh start; "latest" -> newest complete checkpoint if any; otherwise a folder
    that must be a training checkpoint. `set_aside`: move unusable newer ones out of the way."""
    if resume is None:
        return None
    if resume == "latest":
        return checkpoint_dir(output_dir).latest(trainer_state, set_aside=set_aside)
    path = Path(resume)
    try:
        state = trainer_state(path)
    except (FileNotFoundError, ValueError) as error:
        raise FileNotFoundError(f"train.resume={resume!r} is not a training checkpoint: {error}") from None
    return ResumePoint(Checkpoint(int(state.get("step", 0)), path), state)


def load_trainer_file(checkpoint: Path, name: str) -> Any:
    """A `trainer/` file of a checkpoint, loaded without executing pickled code."""
    return torch_load(checkpoint / TRAINER_DIR / name)
