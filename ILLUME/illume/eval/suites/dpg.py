"""DPG-Bench: its prompt files in (ELLA `dpg_bench/prompts/<item_id>.txt`), its image grids out.

`dpg_bench/compute_dpg_bench.py` lists every file of `--image-root-path`, looks the questions up
by the file name before the first '.', and crops `--pic-num` squares of `--resolution` from a
2x2 grid (top-left, top-right, bottom-left, bottom-right). So this runner writes
`<output_dir>/images/<item_id>.png`: the prompt's samples tiled two per row (4 by default), and
nothing else in that folder; the scorer's `--resolution` is one sample's side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from PIL import Image
from vision_tokenizer.utils.user_errors import UserError

from illume.eval.suites.common import T2IJob, atomic_save, fingerprint, run_generation_suite

__all__ = ["read_prompts", "tile", "run"]

GRID_COLUMNS = 2


def read_prompts(folder: Path) -> list[tuple[str, str]]:
    """(item_id, prompt) for every `*.txt` in the folder, sorted by item id."""
    if not folder.is_dir():
        raise UserError(f"--prompts {folder}: no such folder (ELLA's dpg_bench/prompts)")
    items = [(path.stem, path.read_text(encoding="utf-8").strip()) for path in sorted(folder.glob("*.txt"))]
    if not items:
        raise UserError(f"--prompts {folder}: no .txt prompt files in it")
    empty = [key for key, text in items if not text]
    if empty:
        raise UserError(f"--prompts {folder}: empty prompt file(s) {empty[:5]}")
    return items


def tile(images: list[Image.Image]) -> Image.Image:
    """Samples left to right, two per row: the order of the scorer's crops."""
    width, height = images[0].size
    columns = min(GRID_COLUMNS, len(images))
    grid = Image.new("RGB", (columns * width, math.ceil(len(images) / columns) * height))
    for k, image in enumerate(images):
        grid.paste(image, ((k % columns) * width, (k // columns) * height))
    return grid


def run(args: Any) -> int:
    height, width = args.resolution
    if height != width:
        raise UserError(f"--resolution {height}x{width}: DPG-Bench crops square samples; use HxH")
    if not 1 <= args.samples <= 4:
        raise UserError(f"--samples {args.samples}: the DPG-Bench scorer reads 1 to 4 samples per grid")
    items = read_prompts(args.prompts)
    images_dir: Path = args.output_dir / "images"
    jobs = [
        T2IJob(key, text, args.samples, args.seed + i * args.samples) for i, (key, text) in enumerate(items)
    ]

    def write(job: T2IJob, images: list[Image.Image]) -> None:
        atomic_save(tile(images), images_dir / f"{job.key}.png")

    shard = run_generation_suite(
        args,
        "dpg",
        jobs,
        inputs={"prompts": fingerprint(args.prompts)},
        settings={"samples": args.samples},
        is_done=lambda job: (images_dir / f"{job.key}.png").is_file(),
        write=write,
    )
    if shard.is_main:
        side = height * (2 if args.decoder == "sdxl" else 1)
        print(f"DPG-Bench grids in {images_dir}; score with ELLA's scorer (from the ELLA repository root):")
        print(f'  PIC_NUM={args.samples} bash dpg_bench/dist_eval.sh "{images_dir}" {side}')
    return 0
