"""Command line of the tokenizer training (also used by `scripts/train_dualvitok.py`)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from typing import Any

import torch

from vision_tokenizer.job_args import train_parser
from vision_tokenizer.runtime.distributed import init_distributed
from vision_tokenizer.train.loop import Trainer, choose_start
from vision_tokenizer.train.options import TrainOptions
from vision_tokenizer.train.run_logging import setup_file_logging
from vision_tokenizer.utils.config import apply_overrides, load_config, parse_override_value, split_overrides
from vision_tokenizer.utils.user_errors import UserError

__all__ = ["build_parser", "main", "train"]


def build_parser() -> argparse.ArgumentParser:
    return train_parser()  # defined without torch, so that `dualvitok train --help` is instant


def train(cfg: Any, device: str | None = None, stop_after_steps: int | None = None) -> dict[str, Any]:
    """Run training for an already loaded config; returns steps, last checkpoint and run folder."""
    ctx = init_distributed(device)
    try:
        if ctx.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        run_dir = os.path.join(cfg.results_dir, str(cfg.vq_model.get("type", "DualViTok")))
        setup_file_logging(os.path.join(run_dir, "log.txt") if ctx.is_main else None)
        return Trainer(cfg, ctx, stop_after_steps=stop_after_steps).run()
    finally:
        ctx.close()


def top_level_overrides(items: Sequence[str], cfg: Any) -> dict[str, Any]:
    """`--key=value` / `--key value` items for top-level keys (e.g. `--epochs=3`): keys of the
    config file or run options of `TrainOptions` (e.g. `--ckpt_keep=0`); anything else is an error."""
    known = set(cfg) | {f.name for f in dataclasses.fields(TrainOptions)}
    overrides: dict[str, Any] = {}
    position = 0
    while position < len(items):
        item = items[position]
        if not item.startswith("--"):
            raise UserError(f"unexpected argument {item!r}; config overrides look like --a.b=value")
        key, has_value, value = item[2:].partition("=")
        if not has_value:
            if position + 1 >= len(items):
                raise UserError(f"option {item!r} has no value")
            position += 1
            value = items[position]
        if key not in known:
            raise UserError(f"unknown option or config key {item!r}")
        overrides[key] = parse_override_value(value)
        position += 1
    return overrides


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    args, unknown = build_parser().parse_known_args(rest)
    cfg = apply_overrides(load_config(args.config), overrides)
    # Top-level items are validated by `top_level_overrides` (they may name run options that the
    # config file leaves at their defaults), so they are set directly.
    for key, value in top_level_overrides(unknown, cfg).items():
        cfg[key] = value
    if args.resume is not None:
        if args.fresh:
            raise UserError("--fresh and --resume contradict each other: give one of them")
        cfg.resume = args.resume
    choose_start(cfg, fresh=args.fresh, overwrite=args.overwrite)
    return train(cfg, device=args.device, stop_after_steps=args.stop_after_steps)
