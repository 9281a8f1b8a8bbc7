"""Tokenizer data pipeline: folder/ImageNet datasets, size index script, sampler, collate, anchors."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vision_tokenizer.data.datasets import build_dataset, read_size_index, scan_image_folder
from vision_tokenizer.data.image_io import ImageLoadError
from vision_tokenizer.data.sampler import ResolutionGroupedBatchSampler, collate_images
from vision_tokenizer.data.transforms import RATIOS, AspectRatioCrop, build_transform

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "vision_tokenizer" / "scripts" / "read_folder_image_sizes.py"


def _image(path: Path, width: int, height: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _image(root / "b" / "wide.png", 96, 48)
    _image(root / "a.jpg", 64, 64)
    _image(root / "b" / "c" / "tall.webp", 48, 80)
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return root


def test_scan_is_recursive_sorted_and_filters_extensions(folder):
    assert scan_image_folder(str(folder)) == ["a.jpg", "b/c/tall.webp", "b/wide.png", "broken.png"]


def test_size_index_script_reports_unreadable_images(folder, tmp_path):
    out = tmp_path / "index" / "sizes.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--input_folder",
            str(folder),
            "--output_json",
            str(out),
            "--threads",
            "2",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    entries = json.loads(out.read_text())
    assert entries == [
        {"image": "a.jpg", "width": 64, "height": 64},
        {"image": "b/c/tall.webp", "width": 48, "height": 80},
        {"image": "b/wide.png", "width": 96, "height": 48},
    ]
    assert "broken.png" in result.stderr
    unreadable = json.loads((tmp_path / "index" / "sizes.unreadable.json").read_text())
    assert [e["image"] for e in unreadable] == ["broken.png"] and unreadable[0]["reason"]
    paths, sizes = read_size_index(str(out))
    assert sizes == [(64, 64), (80, 48), (48, 96)]  # (H, W)


def test_size_index_bad_entry_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"image": "x.png", "width": 3}]))
    with pytest.raises(ValueError, match="entry 0"):
        read_size_index(str(bad))


def test_folder_dataset_items_and_broken_image_error(folder):
    ds = build_dataset(
        {
            "resolution": 32,
            "augment": {"type": "dualvitok_fix_resolution_train"},
            "dataset": {"dataset": "folder", "data_path": str(folder)},
        }
    )
    item = ds[(0, 123)]
    assert item["image"].shape == (1, 3, 32, 32) and item["image"].min() >= -1 and item["image"].max() <= 1
    torch.testing.assert_close(ds[(0, 123)]["image"], item["image"])  # same seed, same sample
    with pytest.raises(ImageLoadError, match="broken.png"):
        ds[(3, 0)]


def test_imagenet_layout_labels(tmp_path):
    root = tmp_path / "train"
    _image(root / "n02" / "x.png", 40, 40)
    _image(root / "n01" / "y.png", 40, 40)
    _image(root / "n01" / "sub" / "z.png", 40, 40)
    ds = build_dataset(
        {
            "dataset": "imagenet",
            "data_path": str(root),
            "resolution": 32,
            "augment": {"type": "dualvitok_fix_resolution_val"},
        }
    )
    assert ds.paths == ["n01/sub/z.png", "n01/y.png", "n02/x.png"]
    assert ds.labels == [0, 0, 1]


def test_concat_dataset_sizes_from_index(folder, tmp_path):
    index = tmp_path / "sizes.json"
    index.write_text(json.dumps([{"image": "a.jpg", "width": 64, "height": 64}]))
    ds = build_dataset(
        {
            "resolution": 32,
            "augment": {"type": "dualvitok_anyres_resolution_train"},
            "dataset": [
                {"dataset": "folder", "data_path": str(folder), "json_file": str(index)},
                {"dataset": "folder", "data_path": str(folder / "b")},
            ],
        }
    )
    assert len(ds) == 3
    assert ds.image_sizes == [(64, 64), (80, 48), (48, 96)]
    assert ds.path(2).endswith("wide.png")


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sampler_partitions_every_epoch(world):
    batches = []
    for rank in range(world):
        sampler = ResolutionGroupedBatchSampler(23, 2, world, rank, seed=5)
        sampler.set_epoch(1)
        batches.append(list(sampler))
    indices = [i for per_rank in batches for batch in per_rank for i, _ in batch]
    steps = 23 // (2 * world)
    assert all(len(per_rank) == steps for per_rank in batches)
    assert len(indices) == len(set(indices)) == steps * 2 * world


def test_sampler_groups_sizes_and_resumes_identically():
    rng = random.Random(0)
    sizes = [rng.choice([(64, 64), (48, 96), (96, 48)]) for _ in range(48)]
    counts = {s: sizes.count(s) for s in set(sizes)}
    full = ResolutionGroupedBatchSampler(48, 2, 2, 1, seed=7, image_sizes=sizes)
    full.set_epoch(3)
    batches = list(full)
    mixed = sum(len({sizes[i] for i in b}) > 1 for b in full.global_batches(3))
    assert mixed <= len(counts) - 1  # only at the boundary between size groups
    resumed = ResolutionGroupedBatchSampler(48, 2, 2, 1, seed=7, image_sizes=sizes)
    resumed.set_epoch(3, start_batch=5)
    assert list(resumed) == batches[5:]
    other = ResolutionGroupedBatchSampler(48, 2, 2, 1, seed=7, image_sizes=sizes)
    other.set_epoch(4)
    assert list(other) != batches


def test_collate_keeps_orientation():
    portrait = {"image": torch.rand(1, 3, 80, 48), "label": 0, "index": 0, "seed": 1}
    portrait2 = {"image": torch.rand(1, 3, 96, 64), "label": 1, "index": 1, "seed": 2}
    batch = collate_images([portrait, portrait2], anyres=True)
    assert batch["image"].shape == (2, 3, 80, 48)  # still portrait (H > W), not transposed
    torch.testing.assert_close(batch["image"][0], portrait["image"][0])  # already the target size
    assert batch["label"].tolist() == [0, 1]
    with pytest.raises(ValueError, match="training_with_anyres"):
        collate_images([portrait, portrait2])


def test_aspect_ratio_crop_anchor_choice_and_crop_fraction():
    crop = AspectRatioCrop(RATIOS)
    assert crop.match(400, 800).anchor == (384, 768)
    assert crop.match(1000, 1000).anchor == (512, 512)
    fixed = AspectRatioCrop([(256, 256)])
    assert fixed.match(721, 720).crop_fraction == pytest.approx(0.0, abs=1e-2)
    assert fixed.match(500, 1000).crop_fraction == pytest.approx(0.5, abs=1e-3)
    assert fixed.match(500, 600).exceeds(0.2) is False  # 1 - 500/600 ≈ 0.167
    img = Image.new("RGB", (1000, 500))
    out, found = fixed(img)
    assert out.size == (256, 256) and found.anchor == (256, 256)


def test_transforms_shapes():
    img = Image.new("RGB", (100, 60), (255, 0, 0))
    assert build_transform({"type": "dualvitok_fix_resolution_val"}, 48)(img, random.Random(0)).shape == (
        1,
        3,
        48,
        48,
    )
    anyres = build_transform({"type": "dualvitok_anyres_resolution_train", "max_pixels": 64 * 64}, 512)
    assert anyres(img, random.Random(0)).shape == (1, 3, 48, 80)
    with pytest.raises(ValueError, match="augment type"):
        build_transform({"type": "nope"}, 32)
