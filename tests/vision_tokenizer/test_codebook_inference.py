"""Codebook inference: official output schema, grid shapes, skip reports, batching, resume, sharding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vision_tokenizer.codebook_inference import main

from tests.conftest import REPO_ROOT, golden_dir

GOLDEN_CONFIG = golden_dir() / "dualvitok_tiny_config.json"
GOLDEN_WEIGHTS = golden_dir() / "dualvitok_tiny_state_dict.safetensors"
GEN = "Generate an image of {resolution_tag}, the content of image is a red square.\n"
TURNS = [{"from": "human", "value": GEN}, {"from": "gpt", "value": "<image>"}]


def _save(path: Path, height: int, width: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, np.full_like(x, 128.0)], -1)
    Image.fromarray((base + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)).save(path)


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    """A meta-data config with one generation dataset: good, malformed and unusable records."""
    data = tmp_path / "data" / "gen"
    (data / "images").mkdir(parents=True)
    (data / "ann" / "sub").mkdir(parents=True)
    (tmp_path / "data" / "und" / "ann").mkdir(parents=True)  # a dataset without codebook inference
    _save(data / "images" / "square.png", 493, 493, 0)
    _save(data / "images" / "tall.png", 721, 720, 1)
    _save(data / "images" / "wide.png", 300, 900, 2)  # long/short 3 > 1.25: crop too large at fixed 256
    (data / "images" / "broken.png").write_bytes(b"not a png")
    turn = [{"from": "human", "value": GEN}, {"from": "gpt", "value": "<image>"}]
    edit = [{"from": "human", "value": "<image>\nMake it blue."}, {"from": "gpt", "value": "<image>"}]
    lines = [
        json.dumps({"images": ["square.png"], "conversations": turn}),
        "{this is not json",
        json.dumps({"images": ["tall.png", "square.png"], "conversations": edit}),
        "",
        json.dumps({"images": ["broken.png"], "conversations": turn}),
        json.dumps({"images": ["wide.png"], "conversations": turn}),
        json.dumps({"conversations": turn}),
        json.dumps({"images": "tall.png", "conversations": turn}),
        json.dumps({"images": ["square.png"], "conversations": turn[::-1]}),  # training would reject it
    ]
    text = "\n".join(lines).encode() + b'\n{"images": ["caf\xe9.png"]}\n'  # line 10: Latin-1, not UTF-8
    (data / "ann" / "part0.jsonl").write_bytes(b"\xef\xbb\xbf" + text)  # a byte-order mark is fine
    (data / "ann" / "sub" / "list.json").write_text(
        json.dumps([{"images": ["square.png"], "conversations": turn}])
    )
    meta = tmp_path / "data" / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "gen": {
                    "root": "gen",
                    "image_dir": "gen/images",
                    "annotation_dir": "gen/ann",
                    "tokenizer_inference": True,
                },
                "und": {
                    "root": "und",
                    "image_dir": "und/images",
                    "annotation_dir": "und/ann",
                    "tokenizer_inference": False,
                },
            }
        )
    )
    return meta


def _args(meta: Path, *extra: str) -> list[str]:
    return [
        "--model_config",
        str(GOLDEN_CONFIG),
        "--tokenizer_checkpoint",
        str(GOLDEN_WEIGHTS),
        "--data_config",
        str(meta),
        "--resolution_type",
        "fixed",
        "--resolution",
        "256",
        *extra,
    ]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_outputs_schema_skips_and_statistics(dataset):
    summary = main(_args(dataset, "--batch_size", "3"))
    out = dataset.parent / "gen" / "jsonl_after_tokenizer" / "dualvitok"
    assert summary == {"gen": {"tokenized": 4, "skipped": 6}}
    records = _lines(out / "fixed_256" / "part0.jsonl")
    golden = _lines(golden_dir() / "codebook_inference_examples_editing.jsonl")[0]
    assert [list(r) for r in records] == [
        ["images", "conversations", "image_sizes", "image_embed_inds", "matched_ratios"]
    ] * 3
    assert list(golden) == list(records[1])
    assert (
        records[0]["conversations"][0]["value"] == GEN and records[1]["images"] == ["tall.png", "square.png"]
    )
    assert records[1]["image_sizes"] == golden["image_sizes"] == [[721, 720], [493, 493]]
    assert records[1]["matched_ratios"] == golden["matched_ratios"] == [[256, 256], [256, 256]]
    for record in records:
        for semantic, pixel in record["image_embed_inds"]:
            assert np.array(semantic).shape == (9, 9) and np.array(pixel).shape == (16, 16)
            assert np.array(semantic).max() < 256 and np.array(pixel).max() < 768
    assert records[2]["images"] == "tall.png"  # a single path stays as given
    assert len(_lines(out / "fixed_256" / "sub" / "list.jsonl")) == 1  # .json inputs become .jsonl

    skipped = _lines(out / "fixed_256_skipped.jsonl")
    by_line = {entry["line"]: entry for entry in skipped}
    assert sorted(by_line) == [2, 5, 6, 7, 9, 10]
    assert all(entry["file"].endswith("part0.jsonl") for entry in skipped)
    assert "not valid JSON" in by_line[2]["reason"]
    assert "alternate starting with human" in by_line[9]["reason"]
    assert "not valid UTF-8" in by_line[10]["reason"]
    assert "unreadable image" in by_line[5]["reason"] and by_line[5]["image"].endswith("broken.png")
    assert "crop_percent_thresh" in by_line[6]["reason"]
    assert "1 <image> marker(s) but 0 image(s)" in by_line[7]["reason"]
    stats = json.loads(
        (dataset.parent / "gen" / "jsonl_after_tokenizer" / "fixed_256_data_statistic.json").read_text()
    )
    assert stats == {"ratio_h256_w256": 4}  # summed over both files, not overwritten per file
    assert not any(p.name.endswith(".tmp") or ".rank" in p.name for p in out.rglob("*"))


def _single_dataset(tmp_path: Path, sizes: list[tuple[int, int]]) -> tuple[Path, Path]:
    data = tmp_path / "d"
    (data / "images").mkdir(parents=True)
    (data / "ann").mkdir()
    rows = []
    for k, (height, width) in enumerate(sizes):
        _save(data / "images" / f"{k}.png", height, width, k)
        rows.append({"images": [f"{k}.png"], "conversations": TURNS})
    (data / "ann" / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "d": {
                    "root": "d",
                    "image_dir": "d/images",
                    "annotation_dir": "d/ann",
                    "tokenizer_inference": True,
                }
            }
        )
    )
    return meta, data / "jsonl_after_tokenizer"


def test_batched_encoding_equals_one_by_one(tmp_path):
    meta, out = _single_dataset(tmp_path, [(300, 280), (256, 300), (500, 480)])
    output = out / "dualvitok" / "fixed_256" / "x.jsonl"
    main(_args(meta, "--batch_size", "1"))
    single = _lines(output)
    main(_args(meta, "--batch_size", "4"))
    assert _lines(output) == single and len(single) == 3


def test_fixed_anchors_grid_shapes(tmp_path):
    meta, out = _single_dataset(tmp_path, [(390, 500)])
    main(
        [
            "--model_config",
            str(GOLDEN_CONFIG),
            "--tokenizer_checkpoint",
            str(GOLDEN_WEIGHTS),
            "--data_config",
            str(meta),
            "--resolution_type",
            "fixed_anchors",
        ]
    )
    (record,) = _lines(out / "dualvitok" / "fixed_anchors" / "x.jsonl")
    assert record["matched_ratios"] == [[384, 512]] and record["image_sizes"] == [[390, 500]]
    semantic, pixel = record["image_embed_inds"][0]
    assert np.array(semantic).shape == (12, 16) and np.array(pixel).shape == (24, 32)  # formats.md table
    stats = json.loads((out / "fixed_anchors_data_statistic.json").read_text())
    assert stats == {"ratio_h384_w512": 1}


def test_resume_keeps_finished_work(tmp_path):
    meta, out = _single_dataset(tmp_path, [(300, 280), (256, 300), (280, 300)])
    (meta.parent / "d" / "ann" / "y.jsonl").write_text(json.dumps({"images": ["0.png"], "conversations": TURNS}) + "\n")
    work = out / "dualvitok" / "fixed_256_work" / "x.jsonl.rank0of1.jsonl"
    work.parent.mkdir(parents=True)
    marker = {
        "images": ["0.png"],
        "image_sizes": [[1, 1]],
        "image_embed_inds": [[[[0]], [[0]]]],
        "matched_ratios": [[256, 256]],
    }
    work.write_text(json.dumps({"position": 1, "record": marker}) + "\n" + '{"position": 2, "rec')
    main(_args(meta, "--resume"))
    records = _lines(out / "dualvitok" / "fixed_256" / "x.jsonl")
    assert records[0] == marker  # line 1 was not recomputed
    assert len(records) == 3 and records[1]["image_sizes"] == [[256, 300]]  # the cut-off line 2 was redone
    finished = out / "dualvitok" / "fixed_256" / "y.jsonl"
    finished.write_text(json.dumps({"kept": True, "matched_ratios": [[256, 256]]}) + "\n")
    main(_args(meta, "--resume"))
    assert _lines(finished) == [
        {"kept": True, "matched_ratios": [[256, 256]]}
    ]  # finished files are not redone
    assert _lines(out / "dualvitok" / "fixed_256" / "x.jsonl")[0] == marker
    main(_args(meta))
    assert (
        "kept" not in _lines(finished)[0] and _lines(out / "dualvitok" / "fixed_256" / "x.jsonl")[0] != marker
    )


@pytest.mark.distributed
def test_two_ranks_match_one(tmp_path):
    meta, out = _single_dataset(tmp_path, [(300, 280), (256, 300), (500, 480)])
    with open(meta.parent / "d" / "ann" / "x.jsonl", "a") as handle:
        handle.write("{broken\n" + json.dumps({"images": ["missing.png"], "conversations": TURNS}) + "\n")
    main(_args(meta))
    expected = {p.relative_to(out): p.read_text() for p in out.rglob("*.jsonl")}
    assert len(_lines(out / "dualvitok" / "fixed_256_skipped.jsonl")) == 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "vision_tokenizer.codebook_inference",
            *_args(meta, "--device", "cpu"),
        ],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert {p.relative_to(out): p.read_text() for p in out.rglob("*.jsonl")} == expected
