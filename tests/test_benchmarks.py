"""Smoke runs of the benchmark scripts with their smallest settings: they finish and report sane numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from illume.vocab import ImageGrid

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"
TIMEOUT_S = 300  # a few seconds of work each; generous for a CPU shared with other jobs


def _run(script: str, *args: str) -> str:
    """Run one benchmark script as a user would; returns its stdout."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_tokenizer_speed_tiny_prints_the_table_and_ratio(tmp_path: Path) -> None:
    report = tmp_path / "rows.json"
    stdout = _run("tokenizer_speed.py", "--tiny", "--sizes", "256", "--dtypes", "fp32", "--batch-sizes", "1",
                  "--iters", "1", "--warmup", "0", "--threads", "1", "--json", str(report))
    rows = {row["op"]: row for row in json.loads(report.read_text())["rows"]}
    assert sorted(rows) == ["decode", "decode_fast", "encode"]
    assert rows["decode_fast"]["vs_decode"] == pytest.approx(
        rows["decode_fast"]["images_per_s"] / rows["decode"]["images_per_s"]
    )
    official = dict(re.findall(r"(encode|decode) (\d+(?:\.\d+)?)(?: img/s)?[,)]", stdout.splitlines()[-1]))
    assert sorted(official) == ["decode", "encode"], stdout.splitlines()[-1]
    assert "| op | size | dtype | batch | img/s |" in stdout
    for op, row in rows.items():
        assert row["images_per_s"] > 0 and row["gflop_per_image"] > 0
        assert row["ms_per_batch"] == pytest.approx(1e3 / row["images_per_s"], rel=1e-6)  # batch 1
        cells = [cell.strip() for cell in next(
            line for line in stdout.splitlines() if line.startswith(f"| {op} | 256² | fp32 | 1 |")
        ).strip("|").split("|")]
        # Last column: images/s divided by the official H200 figure quoted below the table.
        assert float(cells[-1]) == pytest.approx(row["images_per_s"] / float(official[op.removesuffix("_fast")]), abs=0.006)


def test_generation_speed_tiny_times_engine_jacobi_and_official(tmp_path: Path) -> None:
    report = tmp_path / "rows.json"
    stdout = _run("generation_speed.py", "--tiny", "--sizes", "256", "--batch-sizes", "1", "--prompt-length", "3",
                  "--json", str(report))
    result = json.loads(report.read_text())
    rows = {row["approach"]: row for row in result["rows"]}
    assert sorted(rows) == ["engine", "engine+jacobi", "official"]
    grid = ImageGrid.for_resolution(256, 256)
    for approach, row in rows.items():
        assert re.search(rf"^{re.escape(approach)}\s+256² bs\s+1:", stdout, re.MULTILINE), approach
        assert row["seconds_per_image"] > 0
        assert row["image_tokens_per_second"] * row["seconds_per_image"] == pytest.approx(grid.num_tokens)
        assert row["speedup_vs_official"] == pytest.approx(
            rows["official"]["seconds_per_image"] / row["seconds_per_image"]
        )
    # Forward passes: official 2 per token; engine one per code plus prefill (structure tokens ride
    # along with the next code); speculation fewer still.
    assert rows["official"]["forward_passes_per_image"] == 2 * grid.num_tokens
    assert rows["engine"]["forward_passes_per_image"] == grid.num_semantic + grid.num_pixel + 2
    assert rows["engine+jacobi"]["forward_passes_per_image"] < rows["engine"]["forward_passes_per_image"]
    assert result["decoder_builds"] == 1  # both modes and every call share one bucketed cache


def test_train_throughput_tiny_reports_tokens_per_second(tmp_path: Path) -> None:
    report = tmp_path / "result.json"
    stdout = _run("train_throughput.py", "--tiny", "--batch-size", "2", "--image-size", "48", "--prompt-len", "2",
                  "--steps", "1", "--warmup", "0", "--no-deepspeed", "--json", str(report))
    result = json.loads(report.read_text())
    assert json.loads(stdout) == result  # printed and written alike
    assert (result["shapes"], result["batch_size"], result["image_sides"]) == ("tiny", 2, [48, 32])
    official, best = result["settings"]["official"], result["settings"]["best"]
    assert official["positions_per_step"] == best["positions_per_step"]  # the same samples, two recipes
    for row in (official, best):
        assert row["seconds_per_step"] > 0 and row["peak_memory_gib"] >= 0
        assert row["tokens_per_s"] == pytest.approx(row["positions_per_step"] / row["seconds_per_step"])
    assert best["model_tflop_per_step"] > 0
    assert result["speedup"] == pytest.approx(official["seconds_per_step"] / best["seconds_per_step"])


def test_full_size_e2e_runs_its_stages_on_tiny_parts(tmp_path: Path) -> None:
    report = tmp_path / "e2e.json"
    _run("full_size_e2e.py", "--scale", "tiny", "--resolution", "256", "--sdxl-steps", "1", "--speculative", "jacobi",
         "--offload", "--json", str(report))
    result = json.loads(report.read_text())
    assert result["dualvitok_pixels"] == [256, 256] and result["sdxl_image"] == [512, 512]
    grid = ImageGrid.for_resolution(256, 256)
    assert 1 < result["forward_passes"]["jacobi"] < grid.num_semantic + grid.num_pixel + 2
    for stage in ("build_llm", "llm_codes_jacobi_first", "dualvitok_decode", "sdxl_decode"):
        assert result["stages"][stage]["seconds"] > 0
