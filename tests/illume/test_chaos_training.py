"""MLLM training killed at seeded moments (mid-step, mid-checkpoint-write) resumes to the
uninterrupted loss curve exactly, without repeated metrics rows; interrupted checkpoints never
block a resume."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
from illume.train.checkpoints import ASIDE_DIR, STAGING_DIR, resume_checkpoint
from illume.train.train import main
from vision_tokenizer.runtime.checkpoints import MARKER

from tests.chaos import KILLED, metrics_rows, newest_step, run_child, run_interrupted, schedule
from tests.illume.test_train import TINY_CONFIG, write_tiny_llm

STEPS = 10  # 5 samples, batch 1, 2 epochs


def _argv(llm: Path, out: Path) -> list[str]:
    return [
        str(TINY_CONFIG),
        f"--model_args.language_model.pretrained_model_name_or_path={llm}",
        f"--training_args.output_dir={out}",
        "--training_args.num_train_epochs=2",
        "--training_args.save_steps=1",
        "--training_args.save_total_limit=2",
    ]


def _losses(out: Path) -> list[dict]:
    return [row for row in metrics_rows(out / "metrics.jsonl") if "loss" in row]


def _checkpoint(folder: Path, step: int, marker: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (folder / "model.safetensors").write_bytes(b"weights")
    if marker:
        (folder / MARKER).write_text(f"{step}\n")
    return folder


def test_a_partial_newest_checkpoint_does_not_block_resume(tmp_path):
    good = _checkpoint(tmp_path / "checkpoint-10", 10)
    legacy = _checkpoint(tmp_path / "checkpoint-15", 15, marker=False)  # written before markers
    (tmp_path / "checkpoint-20").mkdir()  # killed before trainer_state.json
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"half")
    broken = _checkpoint(tmp_path / "checkpoint-30", 30)
    (broken / "trainer_state.json").write_text('{"global_st')
    (tmp_path / STAGING_DIR / "checkpoint-40").mkdir(parents=True)
    assert resume_checkpoint(tmp_path, set_aside=True) == str(legacy)
    aside = sorted(p.name for p in (tmp_path / ASIDE_DIR).iterdir())
    assert aside == ["checkpoint-20.incomplete", "checkpoint-30.corrupt", "checkpoint-40.incomplete"]
    (legacy / "model.safetensors").unlink()
    assert resume_checkpoint(tmp_path, set_aside=False) == str(good)  # no marker, no weights: not usable
    assert legacy.exists()  # left in place when not setting aside (other ranks)


@pytest.mark.slow
def test_killed_mllm_training_resumes_to_the_uninterrupted_curve(tmp_path):
    llm = write_tiny_llm(tmp_path / "llm")
    reference = tmp_path / "reference"
    process = run_child(functools.partial(main, _argv(llm, reference)), tmp_path / "reference.log")
    process.join(180)
    assert process.exitcode == 0, (tmp_path / "reference.log").read_text()[-3000:]
    expected = _losses(reference)
    assert [row["step"] for row in expected] == list(range(1, STEPS + 1))

    out = tmp_path / "chaos"
    plan = schedule(seed=14, count=5)
    codes = run_interrupted(
        functools.partial(main, _argv(llm, out)),
        lambda: newest_step(out.glob("checkpoint-*[0-9]/COMPLETE")),
        STEPS,
        plan,
        tmp_path / "chaos.log",
    )
    assert all(code in KILLED for code in codes), (plan, codes)
    assert _losses(out) == expected  # bit-identical losses, grad norms, rates; no repeated rows
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-9"]
    assert all((out / name / MARKER).is_file() for name in ("checkpoint-9", "checkpoint-10"))
    assert any(p.name.endswith(".incomplete") for p in (out / ASIDE_DIR).iterdir())
    assert not (out / STAGING_DIR).exists()
