"""Training checkpoints that survive a kill at any moment (tokenizer and SDXL decoder training).

A checkpoint is one step-numbered file (`0000300.pt`) or folder (`checkpoint-0000300/`) in a
directory. `CheckpointDir.save` writes it under `<name>.tmp`, fsyncs it, adds a completion
marker (a `COMPLETE` file inside a folder; a `<name>.complete` sidecar next to a file) and
publishes it with an atomic rename, then drops the oldest beyond `keep`. `CheckpointDir.latest`
picks the newest checkpoint that is complete *and* loads, says which, and renames any newer
one that is not to `<name>.incomplete` (no marker) or `<name>.corrupt` (marker, but it does not
load), so a kill during a write never blocks a resume and nothing is silently deleted.
Checkpoints without a marker (written before markers existed) are accepted when they load.

Fault injection for chaos tests: `ILLUME_FAULT_CHECKPOINT=N` makes the N-th save of the
process exit (code 75) half-way through writing; `N:unmarked` exits right after the rename
(for a file: before its marker). Other checkpoint writers (the MLLM's) call `fault_hook` too.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vision_tokenizer.runtime.atomic import atomic_write, atomic_write_text, fsync_dir, fsync_tree

__all__ = [
    "Checkpoint",
    "ResumePoint",
    "CheckpointDir",
    "MARKER",
    "FAULT_ENV",
    "FAULT_EXIT_CODE",
    "fault_hook",
    "torch_save",
    "torch_load",
    "capture_rng_state",
    "restore_rng_state",
    "log_offsets",
    "rewind_logs",
]

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
FAULT_ENV = "ILLUME_FAULT_CHECKPOINT"
FAULT_EXIT_CODE = 75
_saves = {"pid": 0, "count": 0}  # saves of this process (reset in a forked child)


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


@dataclass
class ResumePoint:
    """The checkpoint to resume from, what `validate` loaded from it, and what was set aside."""

    checkpoint: Checkpoint
    state: Any
    set_aside: list[Path] = field(default_factory=list)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    """`torch.save` published atomically (temp name, fsync, rename)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def torch_load(path: str | os.PathLike) -> Any:
    """A checkpoint file loaded without executing pickled code; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read ({type(error).__name__}: {error})") from None


class CheckpointDir:
    """Step-numbered checkpoints `<prefix><step:07d><suffix>` in `directory`; see the module docstring.

    Args:
        directory: where the checkpoints live.
        prefix, suffix: around the step number (`""`/`".pt"` for files, `"checkpoint-"`/`""` for folders).
        folder: whether a checkpoint is a folder (marker inside) or a single file (marker beside).
        keep: newest complete checkpoints kept after each save (None or <= 0: all).
        aside: where unusable checkpoints are moved (default: `directory`).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        prefix: str = "",
        suffix: str = ".pt",
        folder: bool = False,
        keep: int | None = None,
        aside: str | os.PathLike | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.aside = Path(aside) if aside is not None else self.directory
        self.prefix, self.suffix, self.folder = prefix, suffix, folder
        self.keep = keep
        self._name = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")

    # ---- names --------------------------------------------------------------------------
    def path_for(self, step: int) -> Path:
        return self.directory / f"{self.prefix}{step:07d}{self.suffix}"

    def marker_path(self, path: Path) -> Path:
        return path / MARKER if self.folder else path.with_name(path.name + ".complete")

    def is_marked(self, path: Path) -> bool:
        marker = self.marker_path(path)
        if not marker.is_file():
            return False
        if self.folder:
            return True
        recorded = marker.read_text(encoding="utf-8").strip()
        return recorded.isdigit() and int(recorded) == path.stat().st_size

    def list(self) -> list[Checkpoint]:
        """Every published checkpoint (complete or not), oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            match = self._name.match(path.name)
            if match and (path.is_dir() if self.folder else path.is_file()):
                found.append(Checkpoint(int(match.group(1)), path))
        return sorted(found, key=lambda c: c.step)

    # ---- writing ------------------------------------------------------------------------
    def save(self, step: int, write: Callable[[Path], None]) -> Path:
        """Call `write(staging_path)`, then mark, publish and prune; returns the final path.

        `write` creates the file (or fills the already created folder) at the path it is given.
        """
        final = self.path_for(step)
        staging = final.with_name(final.name + ".tmp")
        _remove(staging)
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.folder:
            staging.mkdir()
        write(staging)
        fault_hook("written", staging)
        if self.folder:
            fsync_tree(staging)
            atomic_write_text(staging / MARKER, f"{step}\n")
        else:
            with open(staging, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():  # the same step saved again (a resumed run repeating it)
            _remove(final)
            if not self.folder:
                self.marker_path(final).unlink(missing_ok=True)
        os.replace(staging, final)
        fsync_dir(self.directory)
        fault_hook("published")
        if not self.folder:
            atomic_write_text(self.marker_path(final), f"{final.stat().st_size}\n")
        self.prune()
        return final

    def prune(self) -> None:
        """Delete the oldest complete checkpoints beyond `keep` (never the incomplete ones)."""
        if not self.keep or self.keep <= 0:
            return
        complete = [c for c in self.list() if self.is_marked(c.path)]
        for old in complete[: -self.keep]:
            _remove(old.path)
            if not self.folder:
                self.marker_path(old.path).unlink(missing_ok=True)

    # ---- resuming -----------------------------------------------------------------------
    def latest(
        self, validate: Callable[[Path], Any] | None = None, *, set_aside: bool = True
    ) -> ResumePoint | None:
        """The newest checkpoint that is complete and passes `validate` (default: loads).

        `validate(path)` returns what resuming needs (e.g. the loaded state) or raises. Newer
        checkpoints that fail are logged with the reason and, with `set_aside` (the main rank
        only, in multi-process runs), renamed out of the way; leftover `.tmp` staging entries too.
        """
        check = validate or self._default_validate
        moved: list[Path] = []
        if set_aside:
            for marker in self.directory.glob(f"{self.prefix}*{self.suffix}.complete.tmp"):
                marker.unlink()  # a marker whose write was interrupted says nothing
            for leftover in sorted(self.directory.glob(f"{self.prefix}*{self.suffix}.tmp")):
                logger.warning("%s is a checkpoint whose write was interrupted", leftover)
                moved.append(self.move_aside(leftover, "incomplete"))
        for checkpoint in reversed(self.list()):
            marked = self.is_marked(checkpoint.path)
            try:
                state = check(checkpoint.path)
            except Exception as error:  # noqa: BLE001 - any failure to load makes it unusable
                # A marker says the write once finished: damaged since. No marker: never finished.
                kind = "corrupt" if self.marker_path(checkpoint.path).is_file() else "incomplete"
                logger.warning("skipping %s checkpoint %s: %s", kind, checkpoint.path, error)
                if set_aside:
                    moved.append(self.move_aside(checkpoint.path, kind))
                continue
            logger.info(
                "resuming from %s (step %d%s)",
                checkpoint.path,
                checkpoint.step,
                "" if marked else ", no completion marker: verified by loading",
            )
            return ResumePoint(checkpoint, state, moved)
        return None

    def _default_validate(self, path: Path) -> Any:
        if self.folder:
            if not (path / MARKER).is_file():
                raise ValueError(f"{path} has no {MARKER} marker")
            return None
        return torch_load(path)

    def move_aside(self, path: Path, kind: str) -> Path:
        """Rename `path` into `aside` as `<name>.<kind>` (numbered if taken); returns the new path."""
        self.aside.mkdir(parents=True, exist_ok=True)
        base = self.aside / (path.name.removesuffix(".tmp") + f".{kind}")
        target, number = base, 1
        while target.exists():
            target, number = base.with_name(f"{base.name}.{number}"), number + 1
        os.replace(path, target)
        if not self.folder:  # the marker vouches for the file that is no longer there
            self.marker_path(path).unlink(missing_ok=True)
        logger.warning("moved %s aside to %s", path, target)
        return target


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def fault_hook(moment: str, staging: Path | None = None) -> None:
    """Chaos-test hook of every checkpoint writer (`ILLUME_FAULT_CHECKPOINT`, see the module docstring).

    `moment` is "written" (all files written, nothing published yet; counts the saves of this
    process) or "published" (renamed into place). At the planned save, "written" truncates the
    largest file of `staging` to half and exits, as a kill during the write would leave it;
    with the `:unmarked` variant the exit happens at "published" instead.
    """
    if _saves["pid"] != os.getpid():
        _saves.update(pid=os.getpid(), count=0)
    if moment == "written":
        _saves["count"] += 1
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    count, _, phase = spec.partition(":")
    if int(count) != _saves["count"]:
        return
    if moment == "written" and phase != "unmarked" and staging is not None:
        files = [staging] if staging.is_file() else sorted(p for p in staging.rglob("*") if p.is_file())
        if files:
            biggest = max(files, key=lambda p: p.stat().st_size)
            with open(biggest, "r+b") as handle:
                handle.truncate(biggest.stat().st_size // 2)
        os._exit(FAULT_EXIT_CODE)
    if moment == "published" and phase == "unmarked":
        os._exit(FAULT_EXIT_CODE)


# ---- run logs -----------------------------------------------------------------------------
def log_offsets(paths: Iterable[str | os.PathLike]) -> dict[str, int]:
    """Byte sizes of a run's append-only logs, by file name, to store in a checkpoint.

    Logging file handlers are flushed first so the sizes include every line logged so far.
    """
    for handler in logging.getLogger().handlers + logging.getLogger("vision_tokenizer").handlers:
        if isinstance(handler, logging.FileHandler):
            handler.flush()
    return {Path(p).name: os.path.getsize(p) for p in paths if os.path.isfile(p)}


def rewind_logs(folder: str | os.PathLike, offsets: Mapping[str, int]) -> list[Path]:
    """Cut `folder/<name>` back to the size recorded when the checkpoint was saved, so a resumed
    run does not repeat the lines that the killed run wrote after it; returns the files cut."""
    cut = []
    for name, size in offsets.items():
        path = Path(folder) / name
        if path.is_file() and path.stat().st_size > size:
            with open(path, "r+b") as handle:
                handle.truncate(size)
            cut.append(path)
    return cut


# ---- random number generators -------------------------------------------------------------
def capture_rng_state(
    device: torch.device | None = None, generators: Mapping[str, torch.Generator] | None = None
) -> dict[str, Any]:
    """Python, NumPy, torch CPU, the accelerator of `device` and named generators, as
    weights_only-loadable values."""
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
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device is not None and device.type == "npu":
        state["npu"] = torch.npu.get_rng_state(device)
    if generators:
        state["generators"] = {name: gen.get_state() for name, gen in generators.items()}
    return state


def restore_rng_state(
    state: Mapping[str, Any],
    device: torch.device | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
) -> None:
    """Inverse of `capture_rng_state`; parts absent from `state` are left as they are."""
    if "python" in state:
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
    if "numpy" in state:
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
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        if isinstance(state["cuda"], (list, tuple)):  # older checkpoints: every device's state
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            torch.cuda.set_rng_state(state["cuda"], device)
    elif device is not None and device.type == "npu" and "npu" in state:
        torch.npu.set_rng_state(state["npu"], device)
    for name, generator in (generators or {}).items():
        saved = (state.get("generators") or {}).get(name)
        if saved is not None:
            generator.set_state(saved)
