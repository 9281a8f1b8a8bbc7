"""Command line of the quick start: `illume quickstart` and `python -m illume.quickstart`.

`configure` / `run` have the shape of the illume CLI's subcommand table (`illume.cli.Subcommand`);
heavy imports happen inside `run`, so `illume --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vision_tokenizer.utils.user_errors import OneLineErrorParser, UserError, run_cli

from illume.quickstart import STAGES

__all__ = ["NAME", "HELP", "configure", "run", "main"]

NAME = "quickstart"
HELP = "train a tiny ILLUME+ on bundled photos (CPU, minutes) and write an HTML report"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="where every stage writes (default: outputs/quickstart)"
    )
    parser.add_argument(
        "--settings",
        type=Path,
        default=None,
        help="settings file (default: configs/quickstart/quickstart.py)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (repeatable), e.g. --set tokenizer_steps=200 --set llm.hidden_size=64",
    )
    parser.add_argument(
        "--redo",
        action="append",
        default=[],
        choices=STAGES,
        help="run this stage again even if it finished earlier (repeatable); later stages follow",
    )
    parser.add_argument("--until", choices=STAGES, help="stop after this stage")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per process (default: the settings' num_threads; none: the cores free when each stage starts)",
    )


def _settings_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`KEY=VALUE` items → {key: value read as a Python literal (or kept as text)}."""
    from vision_tokenizer.utils.config import parse_override_value

    overrides: dict[str, Any] = {}
    for item in items:
        key, has_value, value = item.partition("=")
        if not has_value or not key:
            raise UserError(f"illume quickstart: --set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = parse_override_value(value)
    return overrides


def run(args: argparse.Namespace) -> int:
    from illume.quickstart.run import run_quickstart
    from illume.quickstart.settings import DEFAULT_SETTINGS_FILE, REPO_ROOT, load_settings

    logging.getLogger("illume.quickstart").setLevel(logging.INFO)  # stage progress, even under `illume`
    overrides = _settings_overrides(args.overrides)
    if args.threads is not None:
        overrides["num_threads"] = args.threads
    try:
        settings = load_settings(args.settings or DEFAULT_SETTINGS_FILE, overrides)
    except (KeyError, ValueError, FileNotFoundError) as error:
        raise UserError(f"illume quickstart: {error}") from None
    out_dir = args.output_dir or REPO_ROOT / "outputs" / "quickstart"
    report = run_quickstart(out_dir, settings, redo=args.redo, until=args.until)
    if report is not None:
        print(f"report: {report}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="illume quickstart", description=HELP)
    configure(parser)
    return parser


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m illume.quickstart`; a bad setting is one line and exit status 2."""
    return run_cli("illume quickstart", _main, sys.argv[1:] if argv is None else argv)
