"""`run_quickstart`: the whole quick start, stage by stage, into one output folder."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from illume.quickstart.report import REPORT_FILE, write_report
from illume.quickstart.runner import StageContext, StageRunner
from illume.quickstart.settings import QuickstartSettings
from illume.quickstart.stages import (
    STAGES,
    build_data,
    build_llm,
    run_inference,
    tokenize_datasets,
    train_mllm,
    train_tokenizer,
)
from illume.quickstart.threads import threads_per_process

__all__ = ["run_quickstart"]

logger = logging.getLogger(__name__)


def _file_digest(path: Path) -> str:
    """The text of a config file, so that editing it re-runs the stages that read it."""
    return path.read_text(encoding="utf-8")


def run_quickstart(
    out_dir: str | os.PathLike,
    settings: QuickstartSettings,
    redo: Sequence[str] = (),
    until: str | None = None,
) -> Path | None:
    """Run (or reuse) every stage up to `until` and return the report path (None if stopped early).

    `redo`: stages to run again even if finished (later stages then follow, as their inputs changed).
    """
    if until is not None and until not in STAGES:
        raise ValueError(f"until={until!r} is not a stage; stages are {list(STAGES)}")
    out_dir = Path(out_dir).resolve()
    runner = StageRunner(out_dir, STAGES, redo)
    s = settings

    def share_of_cores(stage: Callable[[StageContext], dict]) -> Callable[[StageContext], dict]:
        """Run an in-process stage with the threads free when it starts (see illume.quickstart.threads)."""

        def run(ctx: StageContext) -> dict:
            torch.set_num_threads(threads_per_process(s.num_threads))
            return stage(ctx)

        return run

    def stop_after(name: str) -> bool:
        return until == name

    data = runner.run(
        "data", [list(s.photos), s.photo_size, s.edits_per_photo], lambda ctx: build_data(s, ctx)
    )
    if stop_after("data"):
        return None
    tokenizer_inputs = [_file_digest(s.path(s.tokenizer_config)), s.resolution, s.tokenizer_steps, s.seed]
    tokenizer = runner.run("tokenizer", tokenizer_inputs, share_of_cores(lambda ctx: train_tokenizer(s, ctx, data)))
    if stop_after("tokenizer"):
        return None
    runner.run("codebooks", [s.resolution], share_of_cores(lambda ctx: tokenize_datasets(s, ctx, data, tokenizer)))
    if stop_after("codebooks"):
        return None
    llm_inputs = [s.llm, s.bpe_vocab_size, s.seed, list(s.understanding_questions)]
    llm = runner.run("llm", llm_inputs, share_of_cores(lambda ctx: build_llm(s, ctx, data, tokenizer)))
    if stop_after("llm"):
        return None
    mllm_inputs = [_file_digest(s.path(s.mllm_config)), s.mllm_steps, s.nproc_per_node]
    mllm = runner.run("mllm", mllm_inputs, lambda ctx: train_mllm(s, ctx, data, tokenizer, llm))
    if stop_after("mllm"):
        return None
    inference_inputs = [list(s.understanding_questions), s.max_new_tokens]
    runner.run("inference", inference_inputs, share_of_cores(lambda ctx: run_inference(s, ctx, data, tokenizer, mllm)))
    if stop_after("inference"):
        return None

    def report(ctx) -> dict:
        records = {name: marker["record"] for name, marker in runner.records.items()}
        path = write_report(ctx.directory, records, runner.timings(), s.to_dict())
        return {"path": str(path)}

    runner.run("report", [], report, always=True)  # cheap, and it must show the current records
    path = out_dir / "report" / REPORT_FILE
    logger.info("report: %s", path)
    return path
