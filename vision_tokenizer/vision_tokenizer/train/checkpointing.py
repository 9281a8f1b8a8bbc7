"""Training checkpoints: atomic writes, safe loading, random-number-generator states.

A checkpoint is a plain dict of tensors and Python primitives (no pickled objects), so
`torch.load(..., weights_only=True)` reads it. It holds the official keys (`model`,
`optimizer`, `discriminator`, `optimizer_disc`, `scheduler`, `scheduler_disc`, `steps`,
optional `ema`) plus what an exact resume needs: `config` (as a dict), `data_state`
(epoch and next batch), `scaler`, `loss_state` and the RNG states of every rank.
"""

from __future__ import annotations

import glob
import os
import random
import re
from typing import Any

import numpy as np
import torch

__all__ = [
    "atomic_save",
    "load_checkpoint",
    "checkpoint_path",
    "latest_checkpoint",
    "prune_checkpoints",
    "capture_rng_state",
    "restore_rng_state",
]

_NAME = re.compile(r"^(\d{7,})\.pt$")


def atomic_save(obj: dict[str, Any], path: str) -> None:
    """Write to `path.tmp` and rename: a crash never leaves a truncated checkpoint behind."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"{step:07d}.pt")


def _steps_in(directory: str) -> list[tuple[int, str]]:
    found = []
    for path in glob.glob(os.path.join(directory, "*.pt")):
        match = _NAME.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(directory: str) -> str | None:
    found = _steps_in(directory)
    return found[-1][1] if found else None


def prune_checkpoints(directory: str, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (keep <= 0 keeps everything)."""
    if keep <= 0:
        return
    for _, path in _steps_in(directory)[:-keep]:
        os.remove(path)


def capture_rng_state() -> dict[str, Any]:
    """RNG states of Python, NumPy, torch CPU and CUDA as weights_only-loadable values."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": kind,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["key"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
