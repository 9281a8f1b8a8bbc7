"""lmms-eval plugin: registration, batched generate_until, the mme_nopost task, and a real CLI run."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from illume.eval.lmms_eval import MODEL_NAME, TASKS_DIR, manifest
from illume.eval.lmms_eval.models.illume import IllumeLMMs, _truncate
from illume.eval.lmms_eval.tasks.mme import utils_nopost as mme
from lmms_eval.api.instance import Instance
from lmms_eval.models.registry_v2 import ModelRegistryV2
from PIL import Image

from tests.illume import tiny_models

POST_PROMPT = "\nAnswer the question using a single word or phrase."
QUESTIONS = (("Is there a cat in the image? Please answer yes or no.", "Yes"),
             ("Is there a dog in the image? Please answer yes or no.", "No"))  # fmt: skip
CATEGORIES = ("existence", "code_reasoning")
STOP = "\n\n"

tiny_origin_dir = tiny_models.tiny_origin_dir  # shared session fixture


def _docs() -> list[dict]:
    docs = []
    for k, category in enumerate(CATEGORIES):
        y, x = np.mgrid[0:64, 0:96]
        image = Image.fromarray(np.stack([x * 2, y * 3, 0 * x + 60 * k], -1).astype(np.uint8))
        for question, answer in QUESTIONS:
            docs.append({"question_id": f"{category}/{k}.png", "image": image, "question": question,
                         "answer": answer, "category": category})  # fmt: skip
    return docs


@pytest.fixture(scope="module")
def model(tiny_origin_dir: Path) -> IllumeLMMs:
    # `truncation` is an official plugin arg without meaning here: accepted, not an error.
    return IllumeLMMs(pretrained=str(tiny_origin_dir), device="cpu", batch_size=2, truncation=True)


def test_parse_answer_reads_the_end_of_the_reply() -> None:
    assert mme.parse_answer("Yes.") == "yes"
    assert mme.parse_answer("n") == "no"
    assert mme.parse_answer("x") == "other"
    assert mme.parse_answer("Looking closely at the picture, the answer is yes") == "yes"
    # Stock MME reads the first 4 characters ("no, ") and would say "no"; the official plugin reads the end.
    assert mme.parse_answer("No, I was wrong, there is one: yes") == "yes"
    assert mme.parse_answer("Yes, that is what a careful look says: no") == "no"
    assert mme.parse_answer("I cannot tell from this picture") == "other"


def test_doc_to_text_replaces_the_yes_no_request() -> None:
    doc = {"question": " Is it red? Please answer yes or no. "}
    assert mme.doc_to_text(doc, {"pre_prompt": "", "post_prompt": POST_PROMPT}) == "Is it red?" + POST_PROMPT
    assert (
        mme.doc_to_text(doc, {"pre_prompt": "", "post_prompt": ""}) == "Is it red? Please answer yes or no."
    )


def test_mme_score_is_acc_plus_acc_plus() -> None:
    def result(qid: str, score: float) -> dict:
        return {"question_id": qid, "category": "existence", "score": score}

    # image a: both right → 100 + 100; image b: one right → 50 + 0; category mean 125.
    items = [result("a", 1.0), result("a", 1.0), result("b", 1.0), result("b", 0.0)]
    assert mme.aggregate_results(items) == pytest.approx(125.0)
    with pytest.raises(ValueError, match="expected 2 questions"):
        mme.aggregate_results(items[:3])
    doc = {"question_id": "a", "category": "code_reasoning", "answer": "No"}
    assert mme.process_results(doc, ["the answer is no."]) == {
        "mme_cognition_score": {"question_id": "a", "category": "code_reasoning", "score": 1.0}
    }
    with pytest.raises(ValueError, match="unknown category"):
        mme.process_results({**doc, "category": "vibes"}, ["no"])


def test_manifest_resolves_to_the_model_class() -> None:
    registry = ModelRegistryV2()
    registry.register_manifest(manifest())
    assert registry.get_model_class(MODEL_NAME) is IllumeLMMs
    assert (TASKS_DIR / "mme" / "mme_nopost.yaml").is_file()


def test_stop_strings_cut_the_answer() -> None:
    assert _truncate("yes\n\nmore", [STOP]) == "yes"
    assert _truncate("abc", ["", "x"]) == "abc"
    assert _truncate("a.b;c", [";", "."]) == "a"


def test_unknown_model_args_are_refused(tiny_origin_dir: Path) -> None:
    with pytest.raises(TypeError, match="unknown model_args"):
        IllumeLMMs(pretrained=str(tiny_origin_dir), device="cpu", tempreature=0)


def test_generate_until_batches_and_keeps_order(model: IllumeLMMs) -> None:
    docs = _docs()
    model.task_dict = {"tiny": {"test": docs}}
    short = {"max_new_tokens": 3, "temperature": 0, "until": [STOP]}
    longer = {"max_new_tokens": 5, "temperature": 0, "until": [STOP]}
    kwargs = [short, longer, short, short]
    requests = [
        Instance(
            "generate_until",
            (mme.doc_to_text(d, {"post_prompt": POST_PROMPT}), kw, mme.doc_to_visual, i, "tiny", "test"),
            idx=0,
            metadata={"task": "tiny", "doc_id": i, "repeats": 1},
        )  # fmt: skip
        for i, (d, kw) in enumerate(zip(docs, kwargs))
    ]
    calls = []
    understand = model.pipe.understand

    def spy(images, questions, **options):
        calls.append(len(questions))
        return understand(images, questions, **options)

    model.pipe.understand = spy
    try:
        answers = model.generate_until(requests)
    finally:
        model.pipe.understand = understand
    assert sorted(calls) == [1, 1, 2]  # three "short" requests in batches of 2, one "longer"
    for request, answer, kw in zip(requests, answers, kwargs):
        context, _, _, doc_id, _, _ = request.args
        alone = understand(docs[doc_id]["image"].convert("RGB"), context, max_new_tokens=kw["max_new_tokens"],
                           seed=model.seed + doc_id)[0]  # fmt: skip
        assert answer == alone.split(STOP)[0]


def test_beam_search_is_refused(model: IllumeLMMs) -> None:
    with pytest.raises(ValueError, match="num_beams"):
        model._settings({"num_beams": 3})


@pytest.mark.slow
def test_lmms_eval_cli_runs_the_tiny_mme_task(
    model: IllumeLMMs, tiny_origin_dir: Path, tmp_path: Path
) -> None:
    docs = _docs()
    datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)}).save_to_disk(tmp_path / "mme_tiny")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "mme_tiny.yaml").write_text(
        f"include: {TASKS_DIR / 'mme' / 'mme_nopost.yaml'}\n"
        "task: mme_nopost_tiny\n"
        f"dataset_path: {tmp_path / 'mme_tiny'}\n"
        "dataset_kwargs:\n  load_from_disk: true\n"
        "generation_kwargs:\n  max_new_tokens: 4\n  temperature: 0\n  num_beams: 1\n  do_sample: false\n"
        '  until: ["\\n\\n"]\n'
    )
    env = {
        **os.environ,
        "LMMS_EVAL_PLUGINS": "illume.eval.lmms_eval",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    command = [
        sys.executable, "-m", "lmms_eval", "--model", "illume",
        "--model_args", f"pretrained={tiny_origin_dir},device=cpu", "--tasks", "mme_nopost_tiny",
        "--include_path", str(tasks), "--batch_size", "2", "--output_path", str(tmp_path / "out"), "--log_samples",
    ]  # fmt: skip
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (results_file,) = glob.glob(str(tmp_path / "out" / "*" / "*_results.json"))
    scores = json.loads(Path(results_file).read_text())["results"]["mme_nopost_tiny"]
    (samples_file,) = glob.glob(str(tmp_path / "out" / "*" / "*_samples_mme_nopost_tiny.jsonl"))
    samples = sorted(
        (json.loads(line) for line in Path(samples_file).read_text().splitlines()), key=lambda s: s["doc_id"]
    )
    assert len(samples) == len(docs)
    expected_scores = {"mme_perception_score": [], "mme_cognition_score": []}
    for sample in samples:
        doc = docs[sample["doc_id"]]
        assert sample["input"] == doc["question"].replace(mme.YES_NO_SUFFIX, "") + POST_PROMPT
        alone = model.pipe.understand(doc["image"], sample["input"], max_new_tokens=4, seed=model.seed)[0]
        assert sample["filtered_resps"] == alone.split(STOP)[0]
        for metric, value in mme.process_results(doc, [sample["filtered_resps"]]).items():
            expected_scores[metric].append(value)
    for metric, items in expected_scores.items():
        assert scores[f"{metric},none"] == pytest.approx(mme.aggregate_results(items))


@pytest.mark.slow
def test_launcher_adds_the_plugin_tasks(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "illume.eval.lmms_eval", "--tasks", "list"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert "mme_nopost" in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]
