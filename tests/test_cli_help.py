"""Every `--help` of `illume` and `dualvitok` costs under a second of CPU: no torch, no transformers.

Measured as user + system CPU time of the child process (resource.RUSAGE_CHILDREN), not wall
time, so a busy machine does not make the test flaky; the subcommands are read from the parsers.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
from illume.cli import build_parser as illume_parser
from vision_tokenizer.cli import build_parser as dualvitok_parser

CPU_SECONDS = 1.0


def _subcommands(parser) -> list[str]:
    return sorted(parser._subparsers._group_actions[0].choices)


def _commands() -> list[tuple[str, ...]]:
    commands: list[tuple[str, ...]] = [("illume.cli",), ("vision_tokenizer.cli",)]
    commands += [("illume.cli", name) for name in _subcommands(illume_parser())]
    commands += [("vision_tokenizer.cli", name) for name in _subcommands(dualvitok_parser())]
    return commands


def _cpu_seconds_of(argv: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), done


@pytest.mark.parametrize("command", _commands(), ids=" ".join)
def test_help_is_cheap(command: tuple[str, ...]) -> None:
    module, *sub = command
    seconds, done = _cpu_seconds_of([sys.executable, "-m", module, *sub, "--help"])
    assert done.returncode == 0, done.stderr[-2000:]
    program = "illume" if module == "illume.cli" else "dualvitok"
    assert done.stdout.startswith(f"usage: {' '.join([program, *sub])} ")
    assert seconds < CPU_SECONDS, f"{program} {' '.join(sub)} --help took {seconds:.2f} s of CPU"


def test_help_imports_neither_torch_nor_transformers() -> None:
    probe = (
        "import sys; from illume.cli import build_parser; from vision_tokenizer.cli import build_parser as b; "
        "print(sorted(m for m in ('torch', 'transformers', 'gradio', 'diffusers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"
