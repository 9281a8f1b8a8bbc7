"""`illume` CLI on CPU with the golden tiny ILLUME+ and tiny DualViTok."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest
from illume.cli import SUBCOMMANDS, Subcommand, build_parser, main, register_subcommand
from PIL import Image

from tests.illume.tiny_models import tiny_dualvitok_dir, tiny_origin_dir  # noqa: F401

# Tiny models on 2 shared CI cores: thread hand-offs would dominate (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def model_flags(tiny_origin_dir, tiny_dualvitok_dir):  # noqa: F811
    return ["--model", str(tiny_origin_dir), "--dualvitok", str(tiny_dualvitok_dir), "--device", "cpu"]


def test_help_lists_the_subcommands():
    result = subprocess.run(
        [sys.executable, "-m", "illume.cli", "--help"], capture_output=True, text=True, check=True
    )
    for name in ("generate", "edit", "chat"):
        assert name in result.stdout


def test_train_forwards_the_config_and_overrides(monkeypatch):
    import illume.train.train as train_entry
    from illume.cli import main

    received = []
    monkeypatch.setattr(train_entry, "main", received.append)
    code = main(["train", "configs/tiny/illume_debug_tiny.py", "--training_args.max_steps=3", "--a.b", "x"])
    assert code == 0
    assert received == [["configs/tiny/illume_debug_tiny.py", "--training_args.max_steps=3", "--a.b", "x"]]


def test_task_defaults_follow_the_official_recipes():
    gen = build_parser().parse_args(["generate", "--model", "m", "--dualvitok", "d"])
    assert (gen.cfg_scale, gen.temperature, gen.top_k, gen.top_p) == (2.0, 1.0, 2048, 1.0)
    edit = build_parser().parse_args(
        ["edit", "--model", "m", "--dualvitok", "d", "--image", "x", "--instruction", "y"]
    )
    assert (edit.cfg_scale, edit.temperature, edit.top_k, edit.top_p) == (1.5, 0.7, 512, 0.8)


def test_generate_writes_pngs(model_flags, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(
        [
            "generate",
            *model_flags,
            "--prompt",
            "a cat",
            "--prompt",
            "a {dog}",
            "--resolution",
            "256x256",
            "--output-dir",
            str(out),
            "--seed",
            "7",
            "--cfg-scale",
            "1",
        ]
    )
    assert code == 0
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == ["000_a_cat.png", "001_a_dog.png"]
    assert all(Image.open(f).size == (256, 256) for f in files)
    assert str(files[0]) in capsys.readouterr().out


def test_edit_keeps_the_input_size(model_flags, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (100, 70), (90, 30, 160)).save(source)
    out = tmp_path / "edit"
    assert (
        main(
            [
                "edit",
                *model_flags,
                "--image",
                str(source),
                "--instruction",
                "make it red",
                "--resolution",
                "256x256",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    (result,) = out.glob("*.png")
    assert Image.open(result).size == (100, 70)


def test_chat_answers_one_question(model_flags, tmp_path, capsys):
    picture = tmp_path / "p.png"
    Image.new("RGB", (64, 64), (0, 128, 0)).save(picture)
    assert (
        main(
            [
                "chat",
                *model_flags,
                "--image",
                str(picture),
                "--question",
                "What colour?",
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip()


def test_interactive_chat_reads_until_exit(model_flags, monkeypatch, capsys):
    lines = iter(["hello", "/reset", "again", "/exit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert main(["chat", *model_flags, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("illume> ") == 2


def _cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "illume.cli", *argv], capture_output=True, text=True,
        env={**os.environ, "ILLUME_DEBUG": "0", **(env or {})}, timeout=300,
    )  # fmt: skip


MISSING_MODEL = ["generate", "--model", "MISSING", "--dualvitok", "MISSING", "--prompt", "x"]


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["train", "configs/tiny/illume_debug_tiny.py", "--model_args.no_such_key=1"], "no_such_key"),
        (MISSING_MODEL, "--model MISSING"),
        (["generate", "--model", ".", "--dualvitok", ".", "--prompt", "x", "--resolution", "77x77"], "77x77"),
        (["chat", "--model", ".", "--question", "hi", "--device", "gpu"], "--device 'gpu'"),
        (["chat", "--model", ".", "--question", "hi", "--dtype", "fp64"], "'fp64' (choose from 'auto', 'fp32'"),
    ],
)
def test_user_mistakes_are_one_line_and_exit_2(argv, names, capsys, monkeypatch):
    monkeypatch.delenv("ILLUME_DEBUG", raising=False)
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(("illume: error: ", f"illume {argv[0]}: error: "))
    assert names in lines[0]


def test_a_mistake_in_a_real_process_is_one_line_without_traceback():
    done = _cli(*MISSING_MODEL)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "illume: error: --model MISSING: no such folder (details: --debug or ILLUME_DEBUG=1)"
    ]
    assert "Traceback" in _cli(*MISSING_MODEL, "--debug").stderr
    assert "Traceback" in _cli(*MISSING_MODEL, env={"ILLUME_DEBUG": "1"}).stderr


def test_official_spellings_are_hidden_aliases():
    parser = build_parser()
    official = ["generate", "--model_name", "m", "--tokenizer_checkpoint", "d", "--tokenizer_config", "c",
                "--diffusion_decoder_path", "s", "--batch_size", "3", "--llm_cfg_scale", "1.5", "--top_k", "7"]  # fmt: skip
    args = parser.parse_args(official)
    assert (args.model, args.dualvitok, args.dualvitok_config, args.sdxl_decoder) == ("m", "d", "c", "s")
    assert (args.batch_size, args.cfg_scale, args.top_k) == (3, 1.5, 7)
    generate = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "generate")[1]
    text = generate.format_help()
    for flag in ("--model", "--dualvitok", "--dualvitok-config", "--sdxl-decoder", "--batch-size", "--cfg-scale"):
        assert flag in text
    for alias in official[1::2]:
        assert alias not in text, alias


def test_bad_resolution_is_rejected(model_flags, capsys):
    with pytest.raises(SystemExit):
        main(["generate", *model_flags, "--prompt", "x", "--resolution", "big"])
    assert "HxW" in capsys.readouterr().err


def test_subcommands_can_be_registered_once():
    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--steps", type=int, default=1)

    command = Subcommand("dummy-test", "a test command", configure, lambda args: args.steps - 3)
    register_subcommand(command)
    try:
        assert main(["dummy-test", "--steps", "5"]) == 2
        with pytest.raises(ValueError, match="already registered"):
            register_subcommand(command)
    finally:
        SUBCOMMANDS.pop("dummy-test")
