"""Mistakes in what a person typed are one line, not a traceback; bugs still raise.

Errors that mean "the input is wrong" (a missing file, an unknown config key, a size or dtype the
model does not support) derive from `UserError`; the one-line error types of the packages (config
overrides, demo limits, malformed records) do, too. `run_cli` is the wrapper around a command's
`main`: a `UserError` prints `PROG: error: MESSAGE` on stderr and exits with status 2 (the status
argparse uses for bad arguments). `--debug` anywhere on the command line, or `ILLUME_DEBUG=1`,
lets the exception through with its traceback. Both `illume` and `dualvitok` use it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["UserError", "DEBUG_FLAG", "OneLineErrorParser", "debug_requested", "run_cli", "require_path"]

DEBUG_FLAG = "--debug"
USER_ERROR_STATUS = 2


class UserError(Exception):
    """A mistake in the user's input; the message names the input and what is allowed."""

    def __str__(self) -> str:  # KeyError subclasses would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line too (`PROG: error: ... (see PROG --help)`), status 2.

    Sub-command parsers inherit the class (argparse creates them with the parent's type).
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(USER_ERROR_STATUS, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("ILLUME_DEBUG", "") not in ("", "0")


def require_path(path: object, what: str, folder: bool | None = None) -> None:
    """Raise a `UserError` naming `what` (e.g. '--model') when `path` does not exist.

    `folder=True` / `False` also demands a folder / a file.
    """
    from pathlib import Path

    candidate = Path(os.fspath(path))
    if not candidate.exists():
        raise UserError(f"{what} {path}: no such {'folder' if folder else 'file or folder'}")
    if folder is True and not candidate.is_dir():
        raise UserError(f"{what} {path}: expected a folder, got a file")
    if folder is False and candidate.is_dir():
        raise UserError(f"{what} {path}: expected a file, got a folder")


# Loggers of optional backends that talk while being imported: torchao (pulled in by transformers'
# model loading whenever it is installed) reports its CUDA-only kernels missing on a CPU torch, and
# torch's pytree warns about torchao's enum registrations. Neither concerns the user of a command.
_IMPORT_CHATTER = ("torchao", "torch.utils._pytree")


def _quiet_import_chatter() -> None:
    for name in _IMPORT_CHATTER:
        logging.getLogger(name).setLevel(logging.ERROR)


def _status(result: object) -> int:
    """A job's return value as an exit status: an int is one; anything else (a summary) means success."""
    return result if isinstance(result, int) else 0


def run_cli(prog: str, main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> int:
    """Call `main(argv without --debug)`; turn a `UserError` into one stderr line and status 2."""
    items = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(items)
    items = [item for item in items if item != DEBUG_FLAG]
    if debug:
        return _status(main(items))
    _quiet_import_chatter()
    try:
        return _status(main(items))
    except UserError as error:
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{prog}: error: {message} (details: {DEBUG_FLAG} or ILLUME_DEBUG=1)", file=sys.stderr)
        return USER_ERROR_STATUS
