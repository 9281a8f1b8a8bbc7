"""The understanding suite through lmms-eval, and the table of scores beside the paper's.

`illume eval understanding` runs lmms-eval's CLI with our `illume` model (batched requests) on the
`illume_plus_paper` task group (`ILLUME/illume/eval/lmms_eval/tasks/illume_plus_paper/`), with
`--use_cache` so a restart reuses every answer already produced. `illume eval table` reads
lmms-eval's results JSON (and optionally GenEval's `results.jsonl` and our MJHQ `fid.json`) and
writes a Markdown table: benchmark, metric, our score, the paper's ILLUME+ 3B number.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vision_tokenizer.runtime.jsonl import RecordError, read_records
from vision_tokenizer.utils.user_errors import UserError, require_path

__all__ = [
    "PAPER_SUITE",
    "PaperRow",
    "PAPER_ROWS",
    "lmms_eval_command",
    "lmms_eval_env",
    "latest_results",
    "table_rows",
    "geneval_overall",
    "markdown_table",
    "run_understanding",
    "run_table",
]

PAPER_SUITE = "illume_plus_paper"


@dataclass(frozen=True)
class PaperRow:
    """A line of the table: where our score comes from, how to scale it, and the paper's value."""

    benchmark: str
    source: str  # an lmms-eval task, or "geneval" / "mjhq"
    metric: str
    scale: float
    paper_3b: float | None


# The paper's ILLUME+ 3B numbers; rows without one are reported with "—" beside our score.
PAPER_ROWS = (
    PaperRow("POPE", "pope", "pope_accuracy", 100, 87.6),
    PaperRow("MMBench", "mmbench_en_dev", "gpt_eval_score", 1, 80.8),
    PaperRow("SEED", "seedbench", "seed_image", 100, 73.3),
    PaperRow("MME-P", "mme", "mme_perception_score", 1, 1414.0),
    PaperRow("MME-P (official prompt)", "mme_nopost", "mme_perception_score", 1, 1414.0),
    PaperRow("MM-Vet", "mmvet", "gpt_eval_score", 1, 40.3),
    PaperRow("MMMU", "mmmu_val", "mmmu_acc", 100, 44.3),
    PaperRow("AI2D", "ai2d", "exact_match", 100, None),
    PaperRow("TextVQA", "textvqa_val", "exact_match", 100, None),
    PaperRow("ChartQA", "chartqa", "relaxed_overall", 100, None),
    PaperRow("DocVQA", "docvqa_val", "anls", 100, None),
    PaperRow("InfoVQA", "infovqa_val", "anls", 100, None),
    PaperRow("OCRBench", "ocrbench", "ocrbench_accuracy", 1000, None),
    PaperRow("GenEval", "geneval", "overall", 1, 0.72),
    PaperRow("MJHQ-30k FID", "mjhq", "fid", 1, 6.00),
)


# ---------------------------------------------------------------------------------------------
# running lmms-eval
def lmms_eval_command(
    model: str,
    *,
    tasks: str,
    output_dir: Path,
    batch_size: int,
    dualvitok: str | None = None,
    dtype: str | None = None,
    limit: int | None = None,
    num_processes: int = 1,
    include_path: Path | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The lmms-eval command line (through `python -m illume.eval.lmms_eval`, which registers the plugin).

    `include_path`: a folder of your own task yamls; the plugin's tasks stay visible through
    `LMMS_EVAL_PLUGINS` (see `lmms_eval_env`).
    """
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    for name, value in (("--model", model), ("--dualvitok", dualvitok)):
        if value is not None and "," in value:
            raise UserError(f"{name} {value}: lmms-eval model_args cannot hold a path with ','")
    model_args = [f"pretrained={model}"]  # lmms-eval hands --batch_size to the model itself
    if dualvitok is not None:
        model_args.append(f"dualvitok={dualvitok}")
    if dtype is not None and dtype != "auto":
        model_args.append(f"dtype={dtype}")
    launcher = [python, "-m"]
    if num_processes > 1:
        launcher = [python, "-m", "accelerate.commands.launch", f"--num_processes={num_processes}", "-m"]
    command = [
        *launcher, "illume.eval.lmms_eval",
        "--model", "illume",
        "--model_args", ",".join(model_args),
        "--tasks", tasks,
        "--batch_size", str(batch_size),
        "--output_path", str(output_dir / "lmms_eval"),
        "--use_cache", str(output_dir / "lmms_eval_cache"),
        "--log_samples",
    ]  # fmt: skip
    if limit is not None:
        command += ["--limit", str(limit)]
    if include_path is not None:
        command += ["--include_path", str(include_path)]
    return command


def lmms_eval_env() -> dict[str, str]:
    """The environment of the lmms-eval process: the plugin's tasks are found beside any --include_path."""
    return {**os.environ, "LMMS_EVAL_PLUGINS": "illume.eval.lmms_eval"}


def run_understanding(args: Any) -> int:
    from illume.eval.suites.common import fingerprint

    command = lmms_eval_command(
        args.model,
        tasks=args.tasks,
        output_dir=args.output_dir,
        batch_size=args.batch_size,
        dualvitok=args.dualvitok,
        dtype=args.dtype,
        limit=args.limit,
        num_processes=args.num_processes,
        include_path=args.include_path,
    )
    print(" ".join(command))
    if args.dry_run:
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    settings = {
        "suite": "understanding",
        "models": {"mllm": fingerprint(args.model), "dualvitok": fingerprint(args.dualvitok)},
        "tasks": args.tasks,
        "batch_size": args.batch_size,
        "limit": args.limit,
        "command": command,
    }
    (args.output_dir / "eval_settings.json").write_text(
        json.dumps(settings, indent=2) + "\n", encoding="utf-8"
    )
    status = subprocess.run(command, check=False, env=lmms_eval_env()).returncode
    if status != 0:
        return status
    try:
        results = latest_results(args.output_dir / "lmms_eval")
    except UserError:
        raise UserError("lmms-eval wrote no results JSON: see its log above") from None
    table = markdown_table(table_rows(json.loads(results.read_text(encoding="utf-8"))))
    (args.output_dir / "table.md").write_text(table, encoding="utf-8")
    print(table)
    return 0


# ---------------------------------------------------------------------------------------------
# the table
def latest_results(folder: Path) -> Path:
    """lmms-eval's newest `*results*.json` under `folder` (it nests them by model name and date)."""
    found = sorted(
        (p for p in Path(folder).rglob("*results*.json") if p.is_file()), key=lambda p: p.stat().st_mtime
    )
    if not found:
        raise UserError(f"{folder}: no lmms-eval results JSON (*results*.json) under it")
    return found[-1]


def geneval_overall(results_jsonl: Path) -> float:
    """GenEval's overall score as its `summary_scores.py` defines it: the mean of the per-tag accuracies."""
    per_tag: dict[str, list[bool]] = {}
    for location, row in read_records(results_jsonl):
        if not isinstance(row, dict) or "tag" not in row or "correct" not in row:
            raise RecordError(location, "not a GenEval result line (needs 'tag' and 'correct')")
        per_tag.setdefault(row["tag"], []).append(bool(row["correct"]))
    if not per_tag:
        raise UserError(f"{results_jsonl}: no GenEval result lines")
    return sum(sum(v) / len(v) for v in per_tag.values()) / len(per_tag)


def _metric(task_results: dict[str, Any], metric: str) -> float | None:
    for key, value in task_results.items():
        if key.split(",")[0] == metric and isinstance(value, (int, float)):
            return float(value)
    return None


def table_rows(
    lmms_results: dict[str, Any] | None,
    geneval: float | None = None,
    mjhq_fid: float | None = None,
) -> list[tuple[PaperRow, float]]:
    """(row, our scaled score) for every paper row that has a score in the given results."""
    results = (lmms_results or {}).get("results", {})
    rows = []
    for row in PAPER_ROWS:
        if row.source == "geneval":
            value = geneval
        elif row.source == "mjhq":
            value = mjhq_fid
        else:
            value = _metric(results.get(row.source, {}), row.metric)
        if value is not None:
            rows.append((row, value * row.scale))
    return rows


def markdown_table(rows: Sequence[tuple[PaperRow, float]]) -> str:
    lines = ["| benchmark | metric | ours | ILLUME+ 3B (paper) |", "|---|---|---:|---:|"]
    for row, value in rows:
        paper = "—" if row.paper_3b is None else f"{row.paper_3b:g}"
        lines.append(f"| {row.benchmark} | {row.source}/{row.metric} | {value:.2f} | {paper} |")
    return "\n".join(lines) + "\n"


def run_table(args: Any) -> int:
    for flag, value in (("--results", args.results), ("--geneval-results", args.geneval_results),
                        ("--fid-json", args.fid_json)):  # fmt: skip
        if value is not None:
            require_path(value, flag)
    lmms = None
    if args.results is not None:
        path = latest_results(args.results) if args.results.is_dir() else args.results
        lmms = json.loads(path.read_text(encoding="utf-8"))
    geneval = geneval_overall(args.geneval_results) if args.geneval_results is not None else None
    fid = None
    if args.fid_json is not None:
        fid = json.loads(args.fid_json.read_text(encoding="utf-8"))["overall"]["fid"]
    rows = table_rows(lmms, geneval, fid)
    if not rows:
        raise UserError("no scores found: give --results (lmms-eval), --geneval-results or --fid-json")
    table = markdown_table(rows)
    if args.output is not None:
        args.output.write_text(table, encoding="utf-8")
    print(table, end="")
    return 0
