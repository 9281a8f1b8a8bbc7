"""Tokenizer training killed at seeded moments (mid-step, mid-checkpoint-write) resumes to the
uninterrupted loss curve exactly, with one log line per step and unusable checkpoints set aside."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vision_tokenizer.train.cli import main

from tests.chaos import KILLED, metrics_rows, run_child, run_interrupted, schedule
from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py"
STEPS = 14  # 2 images, batch 1, 7 epochs


def _argv(images: Path, results: Path) -> list[str]:
    return [
        str(TINY),
        f"--results_dir={results}",
        f"--sample_dir={results}/samples",
        "--device",
        "cpu",
        f"--data_args.train.dataset=[{{'dataset': 'folder', 'data_path': '{images}'}}]",
        "--data_args.train.resolution=32",
        "--data_args.global_batch_size=1",
        f"--epochs={STEPS // 2}",
        "--lr=2e-3",
        "--log_every=1",
        "--ckpt_every=1",
        "--ckpt_keep=3",
    ]


@pytest.mark.slow
def test_killed_tokenizer_training_resumes_to_the_uninterrupted_curve(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for k in range(2):
        y, x = np.mgrid[0:40, 0:48]
        pixels = np.stack([x * 5 + k * 60, y * 6, 255 - x * 5], -1).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(images / f"{k}.png")

    reference = tmp_path / "reference"
    process = run_child(functools.partial(main, _argv(images, reference)), tmp_path / "reference.log")
    process.join(120)
    assert process.exitcode == 0, (tmp_path / "reference.log").read_text()[-3000:]
    expected = metrics_rows(reference / "DualViTok" / "metrics.jsonl")
    assert [row["step"] for row in expected] == list(range(1, STEPS + 1))

    chaos = tmp_path / "chaos"
    run = chaos / "DualViTok"
    plan = schedule(seed=15, count=6)
    log = tmp_path / "chaos.log"
    codes = run_interrupted(functools.partial(main, _argv(images, chaos)), run / "metrics.jsonl", plan, log)
    assert all(code in KILLED for code in codes), (plan, codes)

    assert metrics_rows(run / "metrics.jsonl") == expected  # every value bit-identical, no repeats
    text = (run / "log.txt").read_text()
    assert [text.count(f"step {step} ") for step in range(1, STEPS + 1)] == [1] * STEPS
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert any(n.endswith(".incomplete") for n in names), names  # the mid-write kills were set aside
    assert "moved" in log.read_text() and "unusable checkpoint was moved aside" in text
