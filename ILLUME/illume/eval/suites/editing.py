"""Editing benchmarks: GEdit-Bench and ImgEdit inputs in, their scorers' layouts out.

* GEdit-Bench (stepfun-ai/GEdit-Bench, a Hugging Face dataset with `task_type`, `key`,
  `instruction`, `instruction_language`, `input_image`, `input_image_raw`): the local download
  (its parquet files) in; `<output_dir>/fullset/<task_type>/<language>/<key>.png`
  out, the layout of Step1X-Edit's `GEdit-Bench/generate_image_example.py` that its VIEScore
  evaluation reads.
* ImgEdit basic (PKU-YuanGroup/ImgEdit `Benchmark/Basic/basic_edit.json` =
  `{key: {"id": <image path under the image root>, "prompt": ..., "edit_type": ...}}`):
  `<output_dir>/images/<key>.png` out, the `--result_img_folder` of `basic_bench.py`.

Edits run in batches of inputs that share an aspect-ratio anchor; outputs have the input's size.
Item i is edited with seed `seed + i`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image
from vision_tokenizer.utils.user_errors import UserError

from illume.eval.suites.common import (
    SAFE_NAME,
    EditJob,
    atomic_save,
    fingerprint,
    read_entries,
    run_editing_suite,
)

__all__ = ["gedit_jobs", "imgedit_jobs", "run_gedit", "run_imgedit"]

GEDIT_FIELDS = ("task_type", "key", "instruction", "instruction_language")


# ---------------------------------------------------------------------------------------------
# GEdit-Bench
def _load_gedit(path: Path, image_column: str) -> list[dict[str, Any]]:
    """The rows of the dataset's parquet files (the Hugging Face download), only the needed columns.

    Image columns hold Hugging Face's image encoding, `{"bytes": ..., "path": ...}`.
    """
    import pyarrow.parquet as pq

    if not path.exists():
        raise UserError(f"--data {path}: no such file or folder (download stepfun-ai/GEdit-Bench)")
    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise UserError(f"--data {path}: no .parquet files in it (download stepfun-ai/GEdit-Bench)")
    rows: list[dict[str, Any]] = []
    for file in files:
        names = pq.read_schema(file).names
        missing = [name for name in (*GEDIT_FIELDS, image_column) if name not in names]
        if missing:
            raise UserError(
                f"--data {file}: not GEdit-Bench (or no --image-column), columns {missing} are missing"
            )
        rows += pq.read_table(file, columns=[*GEDIT_FIELDS, image_column]).to_pylist()
    return rows


def _image_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    raise UserError(f"{where}: the image cell holds no image bytes")


def _decoded(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def gedit_jobs(path: Path, image_column: str, language: str, seed: int) -> list[EditJob]:
    """The rows in `language` ('all': every row); a job's key is its output path in the output folder."""
    jobs = []
    for index, row in enumerate(_load_gedit(path, image_column)):
        if language != "all" and row["instruction_language"] != language:
            continue
        data = _image_bytes(row[image_column], f"--data {path} row {index} ({image_column})")
        with Image.open(io.BytesIO(data)) as header:
            size = header.size
        task, lang, key = (
            str(row[f]).translate(SAFE_NAME) for f in ("task_type", "instruction_language", "key")
        )
        target = Path("fullset", task, lang, f"{key}.png").as_posix()
        jobs.append(
            EditJob(target, str(row["instruction"]).strip(), seed + index, size, lambda d=data: _decoded(d))
        )
    return jobs


def run_gedit(args: Any) -> int:
    jobs = gedit_jobs(args.data, args.image_column, args.language, args.seed)
    out: Path = args.output_dir
    shard = run_editing_suite(
        args,
        "gedit",
        jobs,
        inputs={"data": fingerprint(args.data), "image_column": args.image_column, "language": args.language},
        is_done=lambda job: (out / job.key).is_file(),
        write=lambda job, image: atomic_save(image, out / job.key),
    )
    if shard.is_main:
        print(
            f"GEdit-Bench edits in {out}/fullset/<task_type>/<language>/<key>.png (Step1X-Edit GEdit-Bench layout);"
        )
        print("  score them with GEdit-Bench's VIEScore evaluation (see static/docs/evaluation.md)")
    return 0


# ---------------------------------------------------------------------------------------------
# ImgEdit
def imgedit_jobs(edit_json: Path, image_root: Path, seed: int) -> list[EditJob]:
    table = read_entries(
        edit_json, "--edit-json", "ImgEdit's Benchmark/Basic/basic_edit.json", ("id", "prompt")
    )
    if not image_root.is_dir():
        raise UserError(f"--image-root {image_root}: no such folder (ImgEdit's original benchmark images)")
    jobs = []
    for index, (key, entry) in enumerate(table.items()):
        source = image_root / entry["id"]
        if not source.is_file():
            raise UserError(f"--edit-json {edit_json}: entry {key!r}: input image {source} not found")
        with Image.open(source) as header:
            size = header.size
        jobs.append(
            EditJob(
                str(key).translate(SAFE_NAME),
                entry["prompt"].strip(),
                seed + index,
                size,
                lambda s=source: _load(s),
            )
        )
    return jobs


def _load(path: Path) -> Image.Image:
    from vision_tokenizer.data.image_io import load_image

    return load_image(path)


def run_imgedit(args: Any) -> int:
    jobs = imgedit_jobs(args.edit_json, args.image_root, args.seed)
    images_dir: Path = args.output_dir / "images"
    shard = run_editing_suite(
        args,
        "imgedit",
        jobs,
        inputs={"edit_json": fingerprint(args.edit_json), "image_root": str(args.image_root)},
        is_done=lambda job: (images_dir / f"{job.key}.png").is_file(),
        write=lambda job, image: atomic_save(image, images_dir / f"{job.key}.png"),
    )
    if shard.is_main:
        print(f"ImgEdit edits in {images_dir}; score them with ImgEdit's Benchmark/Basic scripts:")
        print(
            f'  python basic_bench.py --result_img_folder "{images_dir}" --edit_json "{args.edit_json}" '
            f'--origin_img_root "{args.image_root}" --prompts_json <prompts.json>'
        )
    return 0
