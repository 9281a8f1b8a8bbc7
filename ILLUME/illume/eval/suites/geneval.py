"""GenEval: `evaluation_metadata.jsonl` in, the folder its official scorer reads out.

Layout (djghosh13/geneval README, read by `evaluation/evaluate_images.py`, which visits the
all-digit subfolders and their `samples/<digits>.png`):

    <output_dir>/00000/metadata.jsonl      the prompt's line of evaluation_metadata.jsonl
    <output_dir>/00000/samples/0000.png    sample k of that prompt (4 by default)

Sample k of prompt i is generated with seed `seed + i * samples + k`, so the images do not
depend on the number of ranks or the batch size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vision_tokenizer.runtime.jsonl import RecordError, read_records
from vision_tokenizer.utils.user_errors import UserError

from illume.eval.suites.common import T2IJob, fingerprint, run_generation_suite

__all__ = ["read_metadata", "sample_path", "run"]


def read_metadata(path: Path) -> list[dict[str, Any]]:
    """The metadata lines in file order (each needs a 'prompt'); blank lines are ignored."""
    if not path.is_file():
        raise UserError(f"--metadata {path}: no such file (GenEval's prompts/evaluation_metadata.jsonl)")
    rows = []
    for location, row in read_records(path):  # the project's reader: a bad line is `file:line: ...`
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise RecordError(location, "expected an object with a 'prompt' string")
        rows.append(row)
    return rows


def sample_path(output_dir: Path, index: int, sample: int) -> Path:
    return output_dir / f"{index:05d}" / "samples" / f"{sample:04d}.png"


def run(args: Any) -> int:
    from vision_tokenizer.runtime.atomic import atomic_write_text

    from illume.eval.suites.common import atomic_save

    rows = read_metadata(args.metadata)
    out: Path = args.output_dir
    jobs = [
        T2IJob(f"{i:05d}", row["prompt"], args.samples, args.seed + i * args.samples)
        for i, row in enumerate(rows)
    ]

    def is_done(job: T2IJob) -> bool:
        index = int(job.key)
        return (out / job.key / "metadata.jsonl").is_file() and all(
            sample_path(out, index, k).is_file() for k in range(job.samples)
        )

    def write(job: T2IJob, images: list) -> None:
        folder = out / job.key
        atomic_write_text(folder / "metadata.jsonl", json.dumps(rows[int(job.key)]) + "\n")
        for k, image in enumerate(images):
            atomic_save(image, sample_path(out, int(job.key), k))

    shard = run_generation_suite(
        args,
        "geneval",
        jobs,
        inputs={"metadata": fingerprint(args.metadata)},
        settings={"samples": args.samples},
        is_done=is_done,
        write=write,
    )
    if shard.is_main:
        print(f"GenEval images in {out}; score with the official scorer:")
        print(
            "  python evaluation/evaluate_images.py "
            f'"{out}" --outfile "{out}/results.jsonl" --model-path "<OBJECT_DETECTOR_FOLDER>"\n'
            f'  python evaluation/summary_scores.py "{out}/results.jsonl"'
        )
    return 0
