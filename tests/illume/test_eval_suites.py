"""`illume eval` image suites on the golden tiny model (CPU, 64x64): scorer layouts, resume, settings.

The layouts are checked against what the benchmarks' own scorers read:
* GenEval `evaluation/evaluate_images.py`: all-digit subfolders, `metadata.jsonl` read with
  `json.load`, images `samples/<name>` with `re.match(r"\\d+\\.png", name)`;
* DPG-Bench `compute_dpg_bench.py`: every file of the image root, key = name before the first '.',
  crops of side `--resolution` in the order top-left, top-right, bottom-left, bottom-right;
* MJHQ-30k: `<category>/<id>.png` beside the reference `<category>/<id>.jpg`;
* GEdit-Bench (Step1X-Edit `generate_image_example.py`): `fullset/<task_type>/<language>/<key>.png`;
* ImgEdit `basic_bench.py`: `<result_img_folder>/<key>.png`.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.linalg
import torch
from illume.cli import main
from illume.inference.pipeline import IllumePipeline
from PIL import Image

from tests.illume.tiny_models import tiny_dualvitok_dir, tiny_origin_dir  # noqa: F401

SIZE = "64x64"  # the tiny tokenizer has <height_64>/<width_64> tags; 4x4 pixel codes keep runs fast


# Tiny models on 2 shared CI cores: thread hand-offs would dominate (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def models(tiny_origin_dir, tiny_dualvitok_dir):  # noqa: F811
    return ["--model", str(tiny_origin_dir), "--dualvitok", str(tiny_dualvitok_dir)]


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")}


def _log_rows(out):
    rows = []
    for part in sorted((out / "eval_log").glob("items.rank*.jsonl")):
        rows += [json.loads(line) for line in part.read_text().splitlines() if line]
    return rows


def _geneval_metadata(path, count):
    classes = ["cat", "dog", "bench", "clock", "car"][:count]
    lines = [
        {"tag": "single_object", "include": [{"class": c, "count": 1}], "prompt": f"a photo of a {c}"}
        for c in classes
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def test_geneval_layout_resume_and_settings(tmp_path, models, capsys):
    lines = _geneval_metadata(tmp_path / "evaluation_metadata.jsonl", 3)
    out = tmp_path / "geneval"
    argv = ["eval", "geneval", "--metadata", str(tmp_path / "evaluation_metadata.jsonl"), *models,
            "--output-dir", str(out), "--limit", "2", "--samples", "2", "--resolution", SIZE,
            "--batch-size", "3"]  # fmt: skip
    assert main(argv) == 0
    prompts = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.isdigit())
    assert prompts == ["00000", "00001"]  # --limit 2 of 3
    for index, name in enumerate(prompts):
        with open(out / name / "metadata.jsonl") as handle:
            assert json.load(handle) == lines[index]
        samples = sorted(os.listdir(out / name / "samples"))
        assert samples == ["0000.png", "0001.png"] and all(re.match(r"\d+\.png", s) for s in samples)
        assert Image.open(out / name / "samples" / samples[0]).size == (64, 64)
    settings = json.loads((out / "eval_settings.json").read_text())
    generation = settings["generation"]
    assert generation["sampling"]["cfg_scale"] == 2.0 and generation["sampling"]["top_k"] == 2048
    assert generation["resolution"] == [64, 64] and generation["samples"] == 2
    assert generation["models"]["dtype"] == "float32"  # "auto" on the CPU
    assert generation["sampling"]["speculative"] == "jacobi" and generation["models"]["quantize"] == "none"
    config = next(f for f in generation["models"]["mllm"]["files"] if f["file"] == "config.json")
    assert len(config["sha256"]) == 64 and generation["inputs"]["metadata"]["digest"]

    before, rows = _mtimes(out), _log_rows(out)
    assert sorted(r["key"] for r in rows) == prompts
    assert main([*argv, "--batch-size", "1"]) == 0  # restart (any batch size): nothing is generated again
    assert _mtimes(out) == before and _log_rows(out) == rows

    capsys.readouterr()
    assert main([*argv, "--top-k", "50"]) == 2  # other settings: refused, one line naming the change
    assert "sampling.top_k: 2048 -> 50" in capsys.readouterr().err


def test_dpg_grids(tmp_path, models, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for key, text in [
        ("partiprompts1", "a red bus"),
        ("coco2", "two cats on a sofa"),
        ("diffusiondb3", "a lake"),
    ]:
        (prompts / f"{key}.txt").write_text(text + "\n")
    out = tmp_path / "dpg"
    argv = ["eval", "dpg", "--prompts", str(prompts), *models, "--output-dir", str(out), "--limit", "2",
            "--samples", "2", "--resolution", SIZE]  # fmt: skip
    assert main(argv) == 0
    images = sorted(os.listdir(out / "images"))
    assert images == ["coco2.png", "diffusiondb3.png"]  # sorted item ids, first two
    grid = Image.open(out / "images" / "coco2.png")
    assert grid.size == (128, 64)  # two 64-px samples side by side: the scorer's first two crops
    assert main([*argv[:-1], "64x128"]) == 2
    assert "square" in capsys.readouterr().err


def _stand_in_features(weights, device):
    def extract(images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    return extract


def test_mjhq_fid_per_category(tmp_path, models):
    from illume.eval.suites.fid import register_feature_extractor

    register_feature_extractor("test-stand-in", _stand_in_features)
    meta = {
        f"id{i:02d}": {"category": ["people", "animals"][i % 2], "prompt": f"photo number {i}"}
        for i in range(10)
    }
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    reference = tmp_path / "mjhq30k_imgs"
    rng = np.random.default_rng(0)
    for key, entry in meta.items():
        (reference / entry["category"]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
            reference / entry["category"] / f"{key}.jpg"
        )
    out = tmp_path / "mjhq"
    argv = ["eval", "mjhq-fid", "--meta", str(tmp_path / "meta_data.json"), *models, "--output-dir", str(out),
            "--limit", "8", "--resolution", SIZE, "--reference-dir", str(reference), "--features", "test-stand-in"]  # fmt: skip
    assert main(argv) == 0
    made = sorted(p.relative_to(out / "images").as_posix() for p in (out / "images").rglob("*.png"))
    assert made == sorted(f"{meta[k]['category']}/{k}.png" for k in list(meta)[:8])
    report = json.loads((out / "fid.json").read_text())
    assert set(report["per_category"]) == {"people", "animals"}
    assert report["overall"]["generated"] == report["overall"]["reference"] == 8

    # independent recomputation: the stand-in features by hand, the textbook formula with scipy
    def features(paths):
        arrays = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float64) / 255 for p in paths])
        return np.concatenate([arrays.mean((1, 2)), arrays.std((1, 2), ddof=1)], 1)

    keys = [k for k in list(meta)[:8] if meta[k]["category"] == "people"]
    a = features([out / "images" / "people" / f"{k}.png" for k in keys])
    b = features([reference / "people" / f"{k}.jpg" for k in keys])
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = (
        ((a.mean(0) - b.mean(0)) ** 2).sum()
        + np.trace(s1 + s2)
        - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2).real)
    )
    assert report["per_category"]["people"]["fid"] == pytest.approx(expected, rel=1e-3, abs=1e-6)


def _png_bytes(size, colour):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_gedit_layout(tmp_path, models):
    rows = [
        ("background_change", "k1", "en", (96, 64)),
        ("color_alter", "k2", "cn", (64, 64)),
        ("style", "k3", "en", (50, 80)),
    ]
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "task_type": [r[0] for r in rows], "key": [r[1] for r in rows],
        "instruction": ["make the sky pink", "把它变成红色", "as a painting"],
        "instruction_language": [r[2] for r in rows],
        "input_image": pa.array([{"bytes": _png_bytes(r[3], (0, 90, 200)), "path": None} for r in rows], image),
        "input_image_raw": pa.array([{"bytes": _png_bytes(r[3], (0, 90, 200)), "path": None} for r in rows], image),
        "Intersection_exist": [True, False, True],
    })  # fmt: skip
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "train-00000-of-00001.parquet")
    out = tmp_path / "gedit"
    argv = ["eval", "gedit", "--data", str(tmp_path / "data"), *models, "--output-dir", str(out), "--limit", "2",
            "--anchors", "64x64,128x128"]  # fmt: skip
    assert main(argv) == 0
    made = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert made == ["fullset/background_change/en/k1.png", "fullset/color_alter/cn/k2.png"]
    assert Image.open(out / made[0]).size == (96, 64)  # back at the input size


def test_imgedit_batches_by_anchor_and_resumes(tmp_path, models, monkeypatch):
    root = tmp_path / "original_images"
    (root / "animal").mkdir(parents=True)
    sizes = {"1082": (128, 128), "673": (64, 64), "97": (120, 120)}  # anchors: 128 (two inputs) and 64
    table = {}
    for key, size in sizes.items():
        Image.new("RGB", size, (30, 120, 30)).save(root / "animal" / f"{key}.jpg")
        table[key] = {"id": f"animal/{key}.jpg", "prompt": "Make it blue.", "edit_type": "alter"}
    (tmp_path / "basic_edit.json").write_text(json.dumps(table))
    batches = []
    real_edit = IllumePipeline.edit

    def spy(self, images, instructions, **kwargs):
        assert kwargs["speculative"] == "none"  # --speculative reaches the pipeline
        batches.append((kwargs["resolution"], len(images)))
        return real_edit(self, images, instructions, **kwargs)

    monkeypatch.setattr(IllumePipeline, "edit", spy)
    out = tmp_path / "imgedit"
    argv = ["eval", "imgedit", "--edit-json", str(tmp_path / "basic_edit.json"), "--image-root", str(root), *models,
            "--output-dir", str(out), "--anchors", "64x64,128x128", "--batch-size", "4",
            "--speculative", "none"]  # fmt: skip
    assert main([*argv, "--limit", "2"]) == 0
    assert sorted(os.listdir(out / "images")) == ["1082.png", "673.png"]
    assert sorted(batches) == [((64, 64), 1), ((128, 128), 1)]
    batches.clear()
    assert main(argv) == 0  # the rest: only item 97 is new
    assert batches == [((128, 128), 1)]
    assert {k: Image.open(out / "images" / f"{k}.png").size for k in sizes} == sizes
    batches.clear()
    (out / "images" / "1082.png").unlink()
    (out / "images" / "97.png").unlink()
    assert main(argv) == 0  # two inputs of different sizes, one anchor: one batch of two
    assert batches == [((128, 128), 2)]


def test_two_torchrun_ranks_split_the_work(tmp_path, tiny_origin_dir, tiny_dualvitok_dir):  # noqa: F811
    _geneval_metadata(tmp_path / "meta.jsonl", 5)
    out = tmp_path / "geneval"
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               "-m", "illume.eval.command", "geneval", "--metadata", str(tmp_path / "meta.jsonl"),
               "--model", str(tiny_origin_dir), "--dualvitok", str(tiny_dualvitok_dir), "--output-dir", str(out),
               "--limit", "4", "--samples", "1", "--resolution", SIZE, "--device", "cpu"]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    by_rank = {}
    for row in _log_rows(out):
        by_rank.setdefault(row["rank"], []).append(row["key"])
    assert {rank: sorted(keys) for rank, keys in by_rank.items()} == {
        0: ["00000", "00002"],
        1: ["00001", "00003"],
    }
    assert sorted(p.name for p in out.iterdir() if p.name.isdigit()) == ["00000", "00001", "00002", "00003"]
    merged = [json.loads(line)["key"] for line in (out / "eval_log" / "items.jsonl").read_text().splitlines()]
    assert merged == ["00000", "00001", "00002", "00003"]


def test_bad_benchmark_files_are_one_line_errors(tmp_path, models, capsys):
    (tmp_path / "meta.jsonl").write_text('{"prompt": "a cat"}\n{not json\n')
    out = ["--output-dir", str(tmp_path / "out")]
    assert main(["eval", "geneval", "--metadata", str(tmp_path / "meta.jsonl"), *models, *out]) == 2
    assert "meta.jsonl:2: not valid JSON" in capsys.readouterr().err
    (tmp_path / "basic_edit.json").write_text(json.dumps({"7": {"id": "a.jpg"}}))
    argv = [
        "eval",
        "imgedit",
        "--edit-json",
        str(tmp_path / "basic_edit.json"),
        "--image-root",
        str(tmp_path),
    ]
    assert main([*argv, *models, *out]) == 2
    assert "entry '7' needs string fields ['id', 'prompt']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing recorded for a run that never started
