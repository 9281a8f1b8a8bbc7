"""Generation eval: jsonl parsing, official naming, sharding over ranks, merge and resume (tiny model, CPU)."""

from __future__ import annotations

import json

import pytest
from illume.eval.generation_eval import main, out_image_name, read_edit_items, read_t2i_items
from PIL import Image

from tests.illume.tiny_models import tiny_dualvitok_dir, tiny_origin_dir  # noqa: F401

# Tiny models on 2 shared CI cores: thread hand-offs would dominate (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _human(text):
    return {"conversations": [{"from": "human", "value": text}]}


def test_items_are_read_like_the_official_datasets(tmp_path):
    t2i = _write_jsonl(tmp_path / "t2i.jsonl", [_human("a cat"), _human(" a dog on 1/2 of a mat. ")])
    assert [(i.id, i.text) for i in read_t2i_items(t2i)] == [(0, "a cat"), (1, "a dog on 1/2 of a mat.")]
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "0.jpg")
    edit = _write_jsonl(tmp_path / "edit.jsonl", [{"images": ["0.jpg"], **_human("<image>Make it blue..")}])
    (item,) = read_edit_items(edit)
    assert item.text == "Make it blue" and item.input_image_path == str(tmp_path / "images" / "0.jpg")
    assert out_image_name(1, "a dog on 1/2 of a mat.") == "1-a dog on 1 2 of a mat.png"


def test_bad_lines_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_human("ok")) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_t2i_items(bad)
    missing = _write_jsonl(tmp_path / "edit.jsonl", [{"images": ["nope.jpg"], **_human("<image>x")}])
    with pytest.raises(FileNotFoundError, match=r"edit\.jsonl:1"):
        read_edit_items(missing)


def test_sharded_run_merges_and_resumes(tmp_path, monkeypatch, tiny_origin_dir, tiny_dualvitok_dir):  # noqa: F811
    t2i = _write_jsonl(tmp_path / "t2i.jsonl", [_human("a cat"), _human("a dog"), _human("a bird")])
    (tmp_path / "images").mkdir()
    Image.new("RGB", (90, 60), (10, 60, 200)).save(tmp_path / "images" / "0.png")
    edit = _write_jsonl(tmp_path / "edit.jsonl", [{"images": ["0.png"], **_human("<image>Make it red.")}])
    out = tmp_path / "out"
    argv = [
        "--mllm_path", str(tiny_origin_dir), "--tokenizer_checkpoint", str(tiny_dualvitok_dir),
        "--t2i", str(t2i), "--edit", str(edit), "--output_dir", str(out),
        "--resolution_type", "fixed", "--resolution", "256", "--edit_resolution", "256x256",
        "--llm_cfg_scale", "1.0", "--batch_size", "2",
    ]  # fmt: skip
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert main(argv) == 0
    root = out / "generation_eval"
    name = "t2i_temperature1.0_topk2048_topp1.0_cfg1.0"
    merged = [json.loads(line) for line in (root / f"{name}_ratio_h256_w256.jsonl").read_text().splitlines()]
    assert [r["id"] for r in merged] == [0, 1, 2]
    assert all(len(r["image_embed_inds"][0]) == 81 and len(r["image_embed_inds"][1]) == 256 for r in merged)
    assert merged[0]["output_text"].startswith(
        "<height_256><width_256><start_of_image><start_of_level0><end_of_line>"
    )
    images = sorted(p.name for p in (root / f"{name}_dualvitok" / "ratio_h256_w256").glob("*.png"))
    assert images == ["0-a cat.png", "1-a dog.png", "2-a bird.png"]
    edit_name = "edit_temperature1.0_topk2048_topp1.0_cfg1.0"
    (edited,) = (root / f"{edit_name}_dualvitok" / "ratio_h-1_w-1").glob("*.png")
    assert Image.open(edited).size == (90, 60)
    (record,) = [json.loads(x) for x in (root / f"{edit_name}_ratio_h-1_w-1.jsonl").read_text().splitlines()]
    assert record["original_sizes"] == [60, 90] and record["text"] == "Make it red"

    parts = {p: p.read_text() for p in root.glob("*.rank*.jsonl")}
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0
    assert {p: p.read_text() for p in root.glob("*.rank*.jsonl")} == parts


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    argv = ["--model", str(tmp_path / "nope"), "--dualvitok", str(tmp_path), "--t2i", str(tmp_path / "none.jsonl"),
            "--output-dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("python -m illume.eval.generation_eval: error: --t2i ") and "none.jsonl" in line
