"""Tokenizer training killed at seeded moments (mid-step, mid-checkpoint-write) resumes to the
uninterrupted loss curve exactly, with one log line per step and unusable checkpoints set aside."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vision_tokenizer.train.cli import main

from tests.chaos import KILLED, metrics_rows, newest_step, run_child, run_interrupted, schedule
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


def _newest(folder: Path, pattern: str) -> int:
    return newest_step(folder.glob(pattern))


def _last_attempt(log: str) -> str:
    """The log from the last attempt that started without a checkpoint (earlier ones are history)."""
    marks = [log.rfind(m) for m in ("no complete checkpoint", "starting a new run")]
    return log[max(max(marks), 0) :]


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
    progress = functools.partial(_newest, run / "checkpoints", "*.pt.complete")
    codes = run_interrupted(functools.partial(main, _argv(images, chaos)), progress, STEPS, plan, log)
    assert all(code in KILLED for code in codes), (plan, codes)

    assert metrics_rows(run / "metrics.jsonl") == expected  # every value bit-identical, no repeats
    text = _last_attempt((run / "log.txt").read_text())
    assert [text.count(f"step {step} ") for step in range(1, STEPS + 1)] == [1] * STEPS
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert any(n.endswith(".incomplete") for n in names), names  # the mid-write kills were set aside
    assert "moved" in log.read_text() and "unusable checkpoint was moved aside" in text


@pytest.mark.slow
def test_killed_sdxl_decoder_training_resumes_to_the_uninterrupted_curve(tmp_path, golden):
    from vision_tokenizer.sdxl.tiny import save_tiny_sdxl
    from vision_tokenizer.sdxl.train import main as train_decoder

    save_tiny_sdxl(tmp_path / "sdxl", code_channels=0, seed=0)
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    for number in range(2):
        coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((520, 520), Image.Resampling.BICUBIC).save(
            tmp_path / "images" / f"{number}.png"
        )

    def argv(out: Path) -> list[str]:
        return [
            str(REPO_ROOT / "configs" / "example" / "sdxl_decoder" / "sdxl_decoder_tiny.py"),
            f"--model.sdxl_path={tmp_path / 'sdxl'}",
            f"--model.dualvitok_checkpoint={golden / 'dualvitok_tiny_state_dict.safetensors'}",
            f"--model.dualvitok_config={golden / 'dualvitok_tiny_config.json'}",
            f"--data.root={tmp_path / 'images'}",
            f"--train.output_dir={out}",
            "--train.global_batch_size=1",
            "--train.micro_batch_size=1",
            "--train.max_steps=10",
            "--train.checkpoint_every=1",
            "--train.log_every=1",
            "--train.checkpoints_total_limit=2",
            "--sample.every=0",
        ]

    process = run_child(
        functools.partial(train_decoder, argv(tmp_path / "reference")), tmp_path / "reference.log"
    )
    process.join(120)
    assert process.exitcode == 0, (tmp_path / "reference.log").read_text()[-3000:]
    expected = metrics_rows(tmp_path / "reference" / "metrics.jsonl")
    assert [row["step"] for row in expected] == list(range(1, 11))

    out = tmp_path / "chaos"
    plan = schedule(seed=3, count=5)
    progress = functools.partial(_newest, out / "checkpoints", "checkpoint-???????/COMPLETE")
    codes = run_interrupted(
        functools.partial(train_decoder, argv(out)), progress, 10, plan, tmp_path / "chaos.log"
    )
    assert all(code in KILLED for code in codes), (plan, codes)
    assert metrics_rows(out / "metrics.jsonl") == expected
    log = _last_attempt((out / "train.log").read_text())
    assert [log.count(f"step {step} ") for step in range(1, 11)] == [1] * 10
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert [n for n in names if "." not in n] == ["checkpoint-0000009", "checkpoint-0000010"]  # keep=2
    assert not any(n.endswith(".tmp") for n in names) and any(n.endswith(".incomplete") for n in names)
