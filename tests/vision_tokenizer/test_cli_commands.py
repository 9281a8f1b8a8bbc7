"""`dualvitok` sub-commands that forward to the training, evaluation and codebook-inference modules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from vision_tokenizer.cli import main
from vision_tokenizer.models.dualvitok import DualViTok

from ..conftest import REPO_ROOT

TINY = REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py"

# Sub-command -> flags and arguments its help must name (those of the module it forwards to).
KEY_FLAGS = {
    "train": ["config", "--resume", "--stop-after-steps", "--device", "--a.b=value"],
    "evaluate": ["config", "--dualvitok", "--use-ema", "--dtype", "--no-fid", "--max-images"],
    "codebook-inference": ["--config", "--dualvitok", "--data-config", "--resolution-type",
                           "--crop-percent-thresh", "--resume", "--batch-size"],
    "train-sdxl-decoder": ["config", "--train.lr"],
}


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for command in ("reconstruct", *KEY_FLAGS):
        listed = [i for i, line in enumerate(lines) if line.strip().split(" ")[0] == command]
        assert listed, command
        # A one-line description follows the name on its line or on the next one.
        described = lines[listed[0]].strip()[len(command):].strip() or lines[listed[0] + 1].strip()
        assert len(described) > 20, command


@pytest.mark.parametrize("command", sorted(KEY_FLAGS))
def test_subcommand_help_is_the_module_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: dualvitok {command} ")
    for flag in KEY_FLAGS[command]:
        assert flag in text, (command, flag)


def test_forwarded_argument_errors_come_from_the_module(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(TINY)])  # --dualvitok is required by vision_tokenizer.evaluate
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "dualvitok evaluate: error:" in err and "--dualvitok" in err


# Official spelling -> the option it stands for (hidden from help, accepted when parsing).
OFFICIAL_ALIASES = {
    "evaluate": {"--vq-ckpt": "vq_ckpt", "--model-dtype": "model_dtype"},
    "codebook-inference": {"--model_config": "model_config", "--tokenizer_checkpoint": "tokenizer_checkpoint",
                           "--data_config": "data_config", "--batch_size": "batch_size"},
    "reconstruct": {"--checkpoint": "checkpoint", "--batch_size": "batch_size"},
}


@pytest.mark.parametrize("command", sorted(OFFICIAL_ALIASES))
def test_official_spellings_are_hidden_aliases(command: str) -> None:
    from vision_tokenizer.job_args import FORWARDED_JOBS

    parser = next(job for job in FORWARDED_JOBS if job.name == command).parser("dualvitok " + command)
    text = parser.format_help()
    required = {"evaluate": ["cfg.py", "--dualvitok", "w"],
                "codebook-inference": ["--config", "c", "--dualvitok", "w", "--data-config", "d"],
                "reconstruct": ["x.png", "--config", "c", "--out", "o"]}[command]
    for alias, dest in OFFICIAL_ALIASES[command].items():
        assert alias not in text, alias
        value = "fp16" if dest == "model_dtype" else "7"
        assert getattr(parser.parse_args([*required, alias, value]), dest) in (value, 7), alias


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """Two small gradient images: one optimizer step of the tiny config (global batch 2)."""
    root = tmp_path / "images"
    root.mkdir()
    y, x = np.mgrid[0:40, 0:48]
    for k in range(2):
        pixels = np.stack([x * 5 + k * 60, y * 6, 255 - x * 5], -1).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{k}.png")
    return root


def test_train_runs_one_step_on_cpu_with_overrides(images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main([
        "train", str(TINY), f"--results_dir={run}/", f"--sample_dir={run}/samples/", "--device", "cpu",
        f"--data_args.train.dataset=[{{'dataset': 'folder', 'data_path': '{images}'}}]",
        "--data_args.train.resolution=32", "--epochs=1", "--ckpt_every=1",
    ])
    assert code == 0
    metrics = [json.loads(line) for line in (run / "DualViTok" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert np.isfinite(metrics[0]["gen_loss/rec_loss"])

    checkpoint = run / "DualViTok" / "checkpoints" / "0000001.pt"
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["steps"] == 1
    assert state["config"]["data_args"]["train"]["resolution"] == 32  # the dotted override reached the config
    assert state["config"]["epochs"] == 1 and state["config"]["ckpt_every"] == 1
    trained = DualViTok.from_pretrained(checkpoint, config=TINY)  # a tokenizer checkpoint, loaded strictly
    assert torch.equal(trained.state_dict()["pixel_decoder.conv_out.weight"],
                       state["model"]["pixel_decoder.conv_out.weight"])
