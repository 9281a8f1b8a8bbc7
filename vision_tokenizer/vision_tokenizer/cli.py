"""`dualvitok` command line: a dispatcher over the tokenizer jobs.

    dualvitok reconstruct | train | evaluate | codebook-inference | train-sdxl-decoder ARGS...

Every sub-command hands its arguments unchanged to the `main(argv)` of the module that owns the
job, so `dualvitok train ...` behaves exactly like `python -m vision_tokenizer.train ...`. The
parsers come from `vision_tokenizer.job_args` (no torch import), so `--help` and usage errors are
answered under the name `dualvitok <cmd>` before the job's module is imported. Mistakes in the
input are one line and exit status 2 (`vision_tokenizer.utils.user_errors`; `--debug` shows the
traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vision_tokenizer.job_args import FORWARDED_JOBS, Job
from vision_tokenizer.utils.user_errors import DEBUG_FLAG, OneLineErrorParser, run_cli

__all__ = ["main", "build_parser"]

PROG = "dualvitok"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=PROG,
        description="DualViTok image tokenizer tools. `dualvitok COMMAND --help` shows a command's options; "
        f"{DEBUG_FLAG} (or ILLUME_DEBUG=1) shows the traceback of an input error.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for job in FORWARDED_JOBS:
        # No option prefixes: every item, --help included, is handed on to the job's own parser.
        sub = subparsers.add_parser(job.name, help=job.summary, add_help=False, prefix_chars="\0")
        sub.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
        sub.set_defaults(job=job)
    return parser


def _run(job: Job, argv: list[str]) -> object:
    parser = job.parser(f"{PROG} {job.name}")
    (parser.parse_known_args if job.known_args else parser.parse_args)(argv)  # --help, usage errors
    return importlib.import_module(job.module).main(argv)


def _dispatch(argv: list[str]) -> object:
    args = build_parser().parse_args(argv)
    return _run(args.job, args.args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dualvitok` console script; returns the process exit code."""
    return run_cli(PROG, _dispatch, argv)


if __name__ == "__main__":
    sys.exit(main())
