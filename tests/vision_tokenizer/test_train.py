"""Tokenizer training: schedules, checkpoints, CLI overrides, and a 2-process gloo run with exact resume."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vision_tokenizer.runtime.checkpoints import (
    CheckpointDir,
    capture_rng_state,
    restore_rng_state,
    torch_load,
    torch_save,
)
from vision_tokenizer.train.cli import top_level_overrides
from vision_tokenizer.train.ema import ModelEMA
from vision_tokenizer.train.schedule import AnnealingLR
from vision_tokenizer.utils.user_errors import UserError

from tests.conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py"
SCRIPT = REPO_ROOT / "vision_tokenizer" / "scripts" / "train_dualvitok.py"


def _optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(style: str, warmup: int, total: int, ratio: float = 0.1) -> list[float]:
    sched = AnnealingLR(_optimizer(), 1.0, warmup, total, style, decay_ratio=ratio)
    return [sched.step() for _ in range(total)]


def test_schedule_warmup_and_decay_shapes():
    assert _lrs("constant", 0, 4) == [1.0] * 4
    assert _lrs("constant", 4, 6) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    linear = _lrs("linear", 0, 4, ratio=0.2)
    assert linear == pytest.approx([0.8, 0.6, 0.4, 0.2])
    cosine = _lrs("cosine", 2, 6, ratio=0.0)
    assert cosine == pytest.approx(
        [0.5, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    )
    with pytest.raises(ValueError, match="lr_decay_style"):
        AnnealingLR(_optimizer(), 1.0, 0, 4, "exp")


def test_schedule_state_and_own_optimizer():
    gen, disc = _optimizer(), _optimizer()
    s_gen = AnnealingLR(gen, 1.0, 4, 8)
    AnnealingLR(disc, 0.5, 0, 8)
    s_gen.step()
    assert gen.param_groups[0]["lr"] == 0.25 and disc.param_groups[0]["lr"] == 0.5
    state = s_gen.state_dict()
    assert set(state) == {"warmup_iter", "num_iters", "decay_style", "end_iter", "decay_ratio"}
    again = AnnealingLR(_optimizer(), 1.0, 0, 1)
    again.load_state_dict(state)
    assert again.step() == s_gen.step() == 0.5


def test_ema_average_and_copy():
    model = torch.nn.BatchNorm1d(2)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    model.num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.state_dict()["weight"], torch.full((2,), 2.0))
    assert ema.state_dict()["num_batches_tracked"].item() == 7


def test_checkpoint_files_atomic_prune_and_rng(tmp_path):
    store = CheckpointDir(tmp_path, keep=2)
    for step in (2, 4, 6):
        store.save(step, lambda path, step=step: torch.save({"steps": step, "t": torch.ones(1)}, path))
    assert not list(tmp_path.glob("*.tmp"))
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["0000004.pt", "0000006.pt"]
    assert store.latest().checkpoint.path.name == "0000006.pt"
    state = capture_rng_state()
    torch_save({"rng": state}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(), random.random())
    restore_rng_state(torch_load(tmp_path / "rng.pt")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1] and random.random() == expected[2]


def test_top_level_overrides():
    cfg = {"epochs": 1, "lr": 1e-4}
    assert top_level_overrides(["--epochs=3", "--lr", "2e-3", "--ckpt_keep=0"], cfg) == {
        "epochs": 3,
        "lr": 2e-3,
        "ckpt_keep": 0,
    }
    with pytest.raises(UserError, match="epochz"):
        top_level_overrides(["--epochz=3"], cfg)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train_images")
    for k in range(2):
        y, x = np.mgrid[0:40, 0:48]
        pixels = np.stack([x * 5 + k * 60, y * 6, 255 - x * 5], -1).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{k}.png")
    return root


def _torchrun(entry: list[str], run_dir: Path, images: Path, *extra: str) -> None:
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        *entry,
        str(TINY),
        f"--results_dir={run_dir}/",
        f"--sample_dir={run_dir}/samples/",
        "--device",
        "cpu",
        f"--data_args.train.dataset=[{{'dataset': 'folder', 'data_path': '{images}'}}]",
        "--data_args.train.resolution=32",
        "--epochs=6",
        "--lr=2e-3",
        "--log_every=1",
        "--ckpt_every=3",
        "--ckpt_keep=0",
        *extra,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "DualViTok" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.distributed
def test_two_process_training_learns_and_resumes_exactly(images, tmp_path):
    full = tmp_path / "full"
    _torchrun(["-m", "vision_tokenizer.train"], full, images)
    metrics = _metrics(full)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    first, late = metrics[0], metrics[3:]
    assert np.mean([m["gen_loss/rec_loss"] for m in late]) < 0.9 * first["gen_loss/rec_loss"]
    assert (
        np.mean([m["semantic_loss/reconstruction_loss"] for m in late])
        < 0.9 * first["semantic_loss/reconstruction_loss"]
    )
    assert (
        metrics[0]["gen_loss/disc_factor"] == 0.0 and metrics[1]["gen_loss/disc_factor"] == 0.5
    )  # disc_start=2
    run = full / "DualViTok"
    assert (run / "log.txt").read_text().count("step 6 ") == 1
    assert (full / "samples" / "train_0000003.png").is_file()

    checkpoint = run / "checkpoints" / "0000003.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert {
        "model",
        "optimizer",
        "discriminator",
        "optimizer_disc",
        "scheduler",
        "scheduler_disc",
        "steps",
        "config",
        "data_state",
        "rng",
    } <= set(state)
    assert state["steps"] == 3 and len(state["rng"]) == 2 and isinstance(state["config"], dict)
    assert any(k.startswith("pixel_decoder.") for k in state["model"])

    resumed = tmp_path / "resumed"
    _torchrun([str(SCRIPT)], resumed, images, f"--resume={checkpoint}")
    tail = _metrics(resumed)
    assert [m["step"] for m in tail] == [4, 5, 6]
    for expected, got in zip(metrics[3:], tail):
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (expected["step"], key)
