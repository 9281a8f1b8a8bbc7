"""Understanding suite: the task list names real lmms-eval tasks, the command line, the score table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import datasets
import lmms_eval
import numpy as np
import pytest
import yaml
from illume.cli import main
from illume.eval.lmms_eval import TASKS_DIR
from illume.eval.suites.understanding import (
    PAPER_SUITE,
    geneval_overall,
    lmms_eval_command,
    markdown_table,
    table_rows,
)
from PIL import Image

from tests.illume.tiny_models import tiny_origin_dir  # noqa: F401


def _defined_tasks() -> set[str]:
    """Task names declared by lmms-eval's own yaml files (`task: name` at the top level)."""
    names = set()
    for path in (Path(lmms_eval.__file__).parent / "tasks").rglob("*.yaml"):
        for match in re.finditer(r"^task:\s*\"?([\w.\-+]+)\"?\s*$", path.read_text(errors="ignore"), re.M):
            names.add(match.group(1))
    return names


def test_paper_suite_lists_lmms_eval_tasks():
    (group_file,) = (TASKS_DIR / PAPER_SUITE).glob("*.yaml")
    group = yaml.safe_load(group_file.read_text())
    assert group["group"] == PAPER_SUITE
    members = group["task"]
    assert len(members) == 12 and len(set(members)) == 12
    assert set(members) <= _defined_tasks()
    for benchmark in ("pope", "mmbench", "seedbench", "mme", "mmvet", "mmmu", "ai2d", "textvqa", "chartqa",
                      "docvqa", "infovqa", "ocrbench"):  # fmt: skip
        assert any(m.startswith(benchmark) for m in members), benchmark


def test_command_line(tmp_path):
    command = lmms_eval_command(
        "ckpt/illume", tasks=PAPER_SUITE, output_dir=tmp_path, batch_size=8, dualvitok="ckpt/dvt", limit=5,
        python="python",
    )  # fmt: skip
    assert command[:3] == ["python", "-m", "illume.eval.lmms_eval"]
    model_args = command[command.index("--model_args") + 1]
    assert dict(item.split("=") for item in model_args.split(",")) == {
        "pretrained": "ckpt/illume", "dualvitok": "ckpt/dvt",
    }  # fmt: skip
    assert command[command.index("--batch_size") + 1] == "8"
    assert command[command.index("--tasks") + 1] == PAPER_SUITE
    assert command[command.index("--use_cache") + 1] == str(tmp_path / "lmms_eval_cache")
    assert command[command.index("--limit") + 1] == "5" and "--log_samples" in command
    many = lmms_eval_command(
        "m", tasks="mme", output_dir=tmp_path, batch_size=2, num_processes=4, python="python"
    )
    assert many[:4] == ["python", "-m", "accelerate.commands.launch", "--num_processes=4"]


def test_dry_run_prints_the_command(tmp_path, capsys):
    assert main(["eval", "understanding", "--model", "m", "--output-dir", str(tmp_path), "--dry-run"]) == 0
    assert "--tasks illume_plus_paper" in capsys.readouterr().out
    assert not (tmp_path / "eval_settings.json").exists()


def test_score_table(tmp_path, capsys):
    results = {"results": {
        "pope": {"alias": "pope", "pope_accuracy,none": 0.85, "pope_f1_score,none": 0.84},
        "mme": {"mme_perception_score,none": 1400.5, "mme_cognition_score,none": 300.0},
        "mmmu_val": {"mmmu_acc,none": 0.4},
        "ocrbench": {"ocrbench_accuracy,none": 0.5},
    }}  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results))
    geneval = [("single_object", True), ("single_object", False), ("counting", True)]
    (tmp_path / "geneval.jsonl").write_text(
        "".join(json.dumps({"tag": t, "correct": c}) + "\n" for t, c in geneval)
    )
    assert geneval_overall(tmp_path / "geneval.jsonl") == pytest.approx((0.5 + 1.0) / 2)
    (tmp_path / "fid.json").write_text(json.dumps({"overall": {"fid": 7.25}}))
    out = tmp_path / "table.md"
    argv = ["eval", "table", "--results", str(tmp_path / "results.json"), "--geneval-results",
            str(tmp_path / "geneval.jsonl"), "--fid-json", str(tmp_path / "fid.json"), "--output", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:5]]
        for line in out.read_text().splitlines()[2:]
    }
    assert lines == {
        "POPE": ["85.00", "87.6"], "MME-P": ["1400.50", "1414"], "MMMU": ["40.00", "44.3"],
        "OCRBench": ["500.00", "—"], "GenEval": ["0.75", "0.72"], "MJHQ-30k FID": ["7.25", "6"],
    }  # fmt: skip
    assert capsys.readouterr().out == out.read_text()
    assert markdown_table(table_rows({"results": {}})).count("\n") == 2  # header only


def test_understanding_runs_lmms_eval_with_the_plugin(tmp_path, monkeypatch, tiny_origin_dir):  # noqa: F811
    """A real lmms-eval run on a tiny local MME-style task: batched model, --limit, results, settings."""
    rng = np.random.default_rng(0)
    questions = (
        ("Is there a cat in the image? Please answer yes or no.", "Yes"),
        ("Is there a dog in the image? Please answer yes or no.", "No"),
    )  # MME: two per image
    docs = [{"question_id": f"{k}.png", "image": Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)),
             "question": question, "answer": answer, "category": "existence"}
            for k in range(2) for question, answer in questions]  # fmt: skip
    datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)}).save_to_disk(tmp_path / "mme_tiny")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mme_tiny.yaml").write_text(
        f"include: {TASKS_DIR / 'mme' / 'mme_nopost.yaml'}\ntask: mme_nopost_tiny\n"
        f"dataset_path: {tmp_path / 'mme_tiny'}\ndataset_kwargs:\n  load_from_disk: true\n"
        "generation_kwargs:\n  max_new_tokens: 4\n  temperature: 0\n  num_beams: 1\n  do_sample: false\n"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["eval", "understanding", "--model", str(tiny_origin_dir), "--tasks", "mme_nopost_tiny",
            "--include-path", str(tasks), "--output-dir", str(out), "--batch-size", "2", "--limit", "2"]  # fmt: skip
    assert main(argv) == 0
    (results,) = out.glob("lmms_eval/*/*_results.json")
    scores = json.loads(results.read_text())["results"]["mme_nopost_tiny"]
    assert isinstance(scores["mme_perception_score,none"], (int, float))  # existence is a perception category
    (samples,) = out.glob("lmms_eval/*/*_samples_mme_nopost_tiny.jsonl")
    assert len(samples.read_text().splitlines()) == 2  # --limit 2 of 4 documents
    settings = json.loads((out / "eval_settings.json").read_text())
    assert settings["tasks"] == "mme_nopost_tiny" and settings["models"]["mllm"]["digest"]
    assert (out / "table.md").read_text().startswith("| benchmark |")
