"""Helpers of the `mme_nopost` task: prompt, answer parsing and the MME score.

Differs from lmms-eval's stock MME only where the official ILLUME+ plugin does: a reply that is not
exactly yes/no is read from its **last** 10 characters (long answers end with the verdict), not
its first 4. The score is MME's: per category acc + acc+ (both questions of an image right),
summed over the perception and the cognition categories.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

PERCEPTION = frozenset({"existence", "count", "position", "color", "posters", "celebrity", "scene",
                        "landmark", "artwork", "OCR"})  # fmt: skip
COGNITION = frozenset(
    {"commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning"}
)
YES_NO_SUFFIX = " Please answer yes or no."
TAIL_CHARS = 10


def doc_to_visual(doc: Mapping[str, Any]) -> list[Image.Image]:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: Mapping[str, Any], lmms_eval_specific_kwargs: Mapping[str, str] | None = None) -> str:
    """The question; with a pre- or post-prompt set, MME's own yes/no request is replaced by it."""
    options = lmms_eval_specific_kwargs or {}
    pre, post = options.get("pre_prompt", ""), options.get("post_prompt", "")
    question = doc["question"].strip()
    if pre or post:
        question = question.replace(YES_NO_SUFFIX, "")
    return f"{pre}{question}{post}"


def parse_answer(reply: str) -> str:
    """'yes', 'no' or 'other' from a model reply."""
    text = reply.lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    tail = text[-TAIL_CHARS:]
    if "yes" in tail:
        return "yes"
    if "no" in tail:
        return "no"
    return "other"


def process_results(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, dict[str, Any]]:
    truth = doc["answer"].lower().strip().replace(".", "")
    if truth not in ("yes", "no"):
        raise ValueError(
            f"MME question {doc['question_id']!r}: answer must be yes or no, got {doc['answer']!r}"
        )
    category = doc["category"]
    if category not in PERCEPTION | COGNITION:
        raise ValueError(f"MME question {doc['question_id']!r}: unknown category {category!r}")
    metric = "mme_perception_score" if category in PERCEPTION else "mme_cognition_score"
    correct = 1.0 if parse_answer(results[0]) == truth else 0.0
    return {metric: {"question_id": doc["question_id"], "category": category, "score": correct}}


def aggregate_results(results: Sequence[Mapping[str, Any]]) -> float:
    """Sum over categories of (acc + acc+) in percent; every image must have its two questions."""
    by_category: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item in results:
        by_category[item["category"]][item["question_id"]].append(item["score"])
    total = 0.0
    for category, questions in by_category.items():
        category_score = 0.0
        for question_id, scores in questions.items():
            if len(scores) != 2:
                raise ValueError(
                    f"MME {category}/{question_id}: expected 2 questions per image, got {len(scores)}"
                )
            category_score += 100.0 * sum(scores) / 2 + (100.0 if sum(scores) == 2 else 0.0)
        total += category_score / len(questions)
    return total
