"""Chaos harness for training resume tests: run a training in a forked child, kill it at seeded
moments, restart it, and compare what it logged with an uninterrupted run.

An interruption is either a SIGKILL, `steps` checkpoints after the one the attempt resumed from
plus a seeded fraction of a step (so it lands in a step or in the next checkpoint's write), or
the checkpoint writer's own fault injection (`ILLUME_FAULT_CHECKPOINT`: exit half-way through
the N-th save, or right after its rename). Progress is read from the completion markers, and
each interruption is shortened when the run has fewer steps left, so every planned kill lands.
Forking keeps restarts cheap (no re-import of torch); the child and the reference run use one
thread, so on CPU the two are bit-identical.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from vision_tokenizer.runtime.checkpoints import FAULT_ENV, FAULT_EXIT_CODE

__all__ = [
    "Interruption",
    "KILLED",
    "schedule",
    "newest_step",
    "run_child",
    "run_interrupted",
    "metrics_rows",
]

KILLED = (-signal.SIGKILL, FAULT_EXIT_CODE)


@dataclass(frozen=True)
class Interruption:
    kind: str  # "sigkill", "write" (fault mid-write) or "unmarked" (fault after the rename)
    steps: int  # checkpoints to pass first (sigkill), or which save of the attempt fails (faults)
    fraction: float = 0.0  # sigkill: how far into the following step


def schedule(seed: int, count: int) -> list[Interruption]:
    """`count` interruptions, at least two SIGKILLs and one of each fault, in a seeded order."""
    rng = random.Random(seed)
    kinds = ["sigkill", "sigkill", "write", "unmarked"] + rng.choices(
        ["sigkill", "write"], k=max(0, count - 4)
    )
    rng.shuffle(kinds)
    return [Interruption(kind, rng.randint(1, 2), rng.random()) for kind in kinds[:count]]


def newest_step(markers: Iterable[Path]) -> int:
    """The highest step among completion-marker paths (first number in each name), 0 if none."""
    steps = [
        int(re.search(r"(\d+)", p.parent.name if p.name == "COMPLETE" else p.name).group(1)) for p in markers
    ]
    return max(steps, default=0)


def metrics_rows(path: Path) -> list[dict]:
    """The complete rows of a metrics jsonl (a line being written is left out)."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    return [json.loads(line) for line in lines if line.endswith("\n") and line.strip()]


def _child(target: Callable[[], object], log: str, fault: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    torch.cuda.is_available = lambda: False  # CPU runs (a forked child cannot use the parent's CUDA)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the child's streams until it exits
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    if fault:
        os.environ[FAULT_ENV] = fault
    else:
        os.environ.pop(FAULT_ENV, None)
    target()


def run_child(target: Callable[[], object], log: Path, fault: str | None = None) -> multiprocessing.Process:
    process = multiprocessing.get_context("fork").Process(target=_child, args=(target, str(log), fault))
    process.start()
    return process


def run_interrupted(
    target: Callable[[], object],
    progress: Callable[[], int],
    total_steps: int,
    plan: list[Interruption],
    log: Path,
    timeout: float = 90,
) -> list[int]:
    """Run `target` once per interruption of `plan`, interrupted as planned, then once to the end.

    `progress()` is the newest completed checkpoint's step. Returns the exit codes of the
    interrupted attempts (each must show the process was killed).
    """
    codes = []
    step_time = 0.2
    for interruption in plan:
        done = progress()
        # Leave steps after the interruption (two for a kill, which lands a fraction of a step late).
        room = total_steps - done - (2 if interruption.kind == "sigkill" else 1)
        if room < 1:
            raise AssertionError(f"the plan is too long for {total_steps} steps: {plan}")
        steps = min(interruption.steps, room)
        if interruption.kind != "sigkill":
            fault = f"{steps}:unmarked" if interruption.kind == "unmarked" else str(steps)
            process = run_child(target, log, fault=fault)
        else:
            process = run_child(target, log)
            deadline = time.monotonic() + timeout
            seen, last_change = progress(), None
            while process.is_alive() and time.monotonic() < deadline:
                now_step = progress()
                if now_step != seen:
                    now = time.monotonic()
                    if last_change is not None:
                        step_time = (now - last_change) / max(now_step - seen, 1)
                    seen, last_change = now_step, now
                if now_step >= done + steps:
                    break
                time.sleep(0.005)
            time.sleep(interruption.fraction * step_time)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        process.join(timeout)
        codes.append(process.exitcode)
    process = run_child(target, log)
    process.join(timeout * 3)
    if process.exitcode != 0:
        raise AssertionError(f"the final run failed ({process.exitcode}); see {log}")
    return codes
