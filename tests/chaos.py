"""Chaos harness for training resume tests: run a training in a forked child, kill it at seeded
moments (SIGKILL after a seeded number of logged steps plus a seeded delay, or the checkpoint
writer's own fault injection mid-write), restart it, and read the metrics it leaves behind.

Forking keeps the restarts cheap (no re-import of torch); the child uses one thread, as does the
uninterrupted reference run, so the two are bit-identical on CPU.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vision_tokenizer.runtime.checkpoints import FAULT_ENV, FAULT_EXIT_CODE

__all__ = ["Interruption", "schedule", "run_child", "run_interrupted", "metrics_rows"]


@dataclass(frozen=True)
class Interruption:
    kind: str  # "sigkill" (after `steps` new logged steps + `delay` s) or a FAULT_ENV value
    steps: int = 1
    delay: float = 0.0


def schedule(seed: int, count: int) -> list[Interruption]:
    """`count` interruptions, at least one of each kind, in a seeded order and at seeded moments."""
    rng = random.Random(seed)
    kinds = ["sigkill", "sigkill", "write", "unmarked"] + rng.choices(
        ["sigkill", "write"], k=max(0, count - 4)
    )
    rng.shuffle(kinds)
    plan = []
    for kind in kinds[:count]:
        if kind == "sigkill":
            plan.append(Interruption("sigkill", rng.randint(1, 2), rng.uniform(0.0, 0.3)))
        else:
            plan.append(Interruption(f"{rng.randint(1, 2)}" + (":unmarked" if kind == "unmarked" else "")))
    return plan


def metrics_rows(path: Path) -> list[dict]:
    """The complete rows of a metrics jsonl (a line being written is left out)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n") and line.strip():
            rows.append(json.loads(line))
    return rows


def _child(target: Callable[[], object], log: str, fault: str | None) -> None:
    import torch

    torch.set_num_threads(1)
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
    target: Callable[[], object], metrics: Path, plan: list[Interruption], log: Path, timeout: float = 60
) -> list[int]:
    """Run `target` once per interruption of `plan` and kill it as planned, then once to the end.

    Returns the exit codes of the interrupted runs (each must show the process was killed).
    """
    codes = []
    for interruption in plan:
        if interruption.kind == "sigkill":
            rows = metrics_rows(metrics)
            target_step = (rows[-1]["step"] if rows else 0) + interruption.steps
            process = run_child(target, log)
            deadline = time.monotonic() + timeout
            while process.is_alive() and time.monotonic() < deadline:
                rows = metrics_rows(metrics)
                if rows and rows[-1]["step"] >= target_step:
                    break
                time.sleep(0.01)
            time.sleep(interruption.delay)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        else:
            process = run_child(target, log, fault=interruption.kind)
        process.join(timeout)
        codes.append(process.exitcode)
    process = run_child(target, log)
    process.join(timeout * 3)
    if process.exitcode != 0:
        raise AssertionError(f"the final run failed ({process.exitcode}); see {log}")
    return codes


KILLED = (-signal.SIGKILL, FAULT_EXIT_CODE)
