"""Reconstruction evaluation: metric definitions, end-to-end results, rFID wiring, sharding."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vision_tokenizer.cli import main as dualvitok_main
from vision_tokenizer.evaluate import INCEPTION_WEIGHTS_FILE, image_metrics, main
from vision_tokenizer.utils.user_errors import UserError

from tests.conftest import REPO_ROOT, golden_dir

TINY = REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py"
WEIGHTS = golden_dir() / "dualvitok_tiny_state_dict.safetensors"


def test_psnr_ssim_on_a_hand_made_pair():
    reference = np.zeros((16, 16, 3), dtype=np.uint8)
    shifted = np.full((16, 16, 3), 10, dtype=np.uint8)
    psnr, ssim = image_metrics(reference, shifted)
    assert psnr == pytest.approx(20 * math.log10(25.5), abs=1e-9)  # MSE (10/255)^2 in [0, 1] units
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert image_metrics(noisy, noisy)[1] == pytest.approx(1.0)
    assert image_metrics(noisy, 255 - noisy)[1] < 0.0  # anti-correlated: SSIM on the [0, 1] range


@pytest.fixture()
def val_folder(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    root.mkdir()
    for k, (h, w) in enumerate([(64, 64), (80, 72), (70, 96)]):
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([x * 200 / w + 20 * k, y * 200 / h, np.full_like(x, 90)], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(root / f"{k}.png")
    return root


def _args(val: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(TINY),
        "--vq-ckpt",
        str(WEIGHTS),
        "--data-path",
        str(val),
        "--out",
        str(out),
        "--batch-size",
        "2",
        *extra,
    ]


def test_results_match_the_saved_images(val_folder, tmp_path):
    out = tmp_path / "eval"
    results = main(_args(val_folder, out, "--no-fid"))
    assert json.loads((out / "results.json").read_text()) == results
    names = sorted(p.name for p in (out / "samples").iterdir())
    assert (
        names == ["000000.png", "000001.png", "000002.png"] == sorted(p.name for p in (out / "gts").iterdir())
    )
    psnrs = []
    for name in names:
        gt = np.asarray(Image.open(out / "gts" / name), dtype=np.float64) / 255
        rec = np.asarray(Image.open(out / "samples" / name), dtype=np.float64) / 255
        assert gt.shape == (64, 64, 3)  # data_args.val: Resize 64 + centre crop
        psnrs.append(10 * math.log10(1.0 / np.mean((gt - rec) ** 2)))
    assert results["num_images"] == 3
    assert results["psnr"] == pytest.approx(np.mean(psnrs), rel=1e-9)
    assert 0 < results["ssim"] <= 1
    # 3 images x 2x2 semantic / 4x4 pixel codes at 64x64: usage is positive and bounded by the count
    assert 0 < results["codebook_usage"]["semantic"] <= 12 / 256
    assert 0 < results["codebook_usage"]["pixel"] <= 48 / 768
    assert "rfid" not in results


def test_rfid_uses_local_weights_and_fails_clearly_without(val_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []
    fake = types.ModuleType("torch_fidelity")
    fake.calculate_metrics = lambda **kw: (
        calls.append(kw) or {"frechet_inception_distance": 12.5, "inception_score_mean": 3.0}
    )
    monkeypatch.setitem(sys.modules, "torch_fidelity", fake)
    with pytest.raises(UserError, match="--no-fid"):
        main(_args(val_folder, tmp_path / "e1"))
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"stand-in")
    results = main(
        _args(val_folder, tmp_path / "e2", "--inception-weights", str(weights), "--max-images", "1")
    )
    assert results["rfid"] == 12.5 and results["inception_score"] == 3.0
    (kwargs,) = calls
    assert kwargs["input1"] == str(tmp_path / "e2" / "samples") and kwargs["input2"] == str(
        tmp_path / "e2" / "gts"
    )
    assert kwargs["fid"] and kwargs["feature_extractor_weights_path"] == str(weights)


@pytest.mark.parametrize(
    "failure",
    [ModuleNotFoundError("No module named 'torch_fidelity'"), RuntimeError("operator torchvision::nms does not exist")],
)
def test_unimportable_torch_fidelity_is_one_line_status_2(val_folder, tmp_path, monkeypatch, capsys, failure):
    import vision_tokenizer.evaluate as evaluate

    real_import = evaluate.importlib.import_module

    def import_module(name, *args):
        if name == "torch_fidelity":
            raise failure
        return real_import(name, *args)

    monkeypatch.setattr(evaluate.importlib, "import_module", import_module)
    assert dualvitok_main(["evaluate", *_args(val_folder, tmp_path / "e")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("dualvitok: error: rFID needs torch-fidelity") and str(failure) in line
    assert 'pip install -e ".[eval]"' in line and "--no-fid" in line
    assert not (tmp_path / "e").exists()  # refused before any work


@pytest.mark.distributed
def test_two_ranks_give_the_same_results(val_folder, tmp_path):
    single = main(_args(val_folder, tmp_path / "one", "--no-fid"))
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
            "vision_tokenizer.evaluate",
            *_args(val_folder, tmp_path / "two", "--no-fid", "--device", "cpu"),
        ],
        check=True,
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    sharded = json.loads((tmp_path / "two" / "results.json").read_text())
    assert sharded["num_images"] == 3
    # Other batch compositions and thread counts change float rounding, so allow a near-tie flip.
    assert sharded["psnr"] == pytest.approx(single["psnr"], rel=1e-4)
    for level, size in (("semantic", 256), ("pixel", 768)):
        assert sharded["codebook_usage"][level] == pytest.approx(
            single["codebook_usage"][level], abs=1.5 / size
        )
