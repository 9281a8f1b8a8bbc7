"""Every inference knob is checked where a request enters: pure checks, the pipeline, the CLI (issue 15.4)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from illume.inference import IllumePipeline
from illume.inference.validation import (
    ContextLimits,
    InvalidSetting,
    check_count,
    check_prompt_length,
    check_resolution,
    check_sampling,
    parse_resolution,
    supported_resolutions,
)
from illume.vocab import RATIOS, RESOLUTION_TAG_SIZES
from PIL import Image
from vision_tokenizer.utils.user_errors import UserError

from tests.illume.tiny_models import tiny_dualvitok_dir, tiny_origin_dir  # noqa: F401

UNSUPPORTED = [(80, 48), (2048, 2048), (16, 16)]


# Tiny models on 2 shared CI cores: thread hand-offs would dominate (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ pure checks
def test_supported_resolutions_are_tagged_anchors_and_squares():
    allowed = supported_resolutions()
    assert set(RATIOS) <= set(allowed)
    assert {(s, s) for s in RESOLUTION_TAG_SIZES} <= set(allowed)  # 64x64: the quick-start model's size
    assert all(h in RESOLUTION_TAG_SIZES and w in RESOLUTION_TAG_SIZES for h, w in allowed)
    assert not set(UNSUPPORTED) & set(allowed)
    # Derived from the tags: with only 256 and 512 tagged, only their squares remain (every anchor
    # shape needs another side length).
    assert supported_resolutions((256, 512)) == ((256, 256), (512, 512))


@pytest.mark.parametrize("size", UNSUPPORTED)
def test_unsupported_resolution_lists_the_allowed_ones(size):
    with pytest.raises(InvalidSetting) as caught:
        check_resolution(size, supported_resolutions())
    message = str(caught.value)
    assert message.startswith(f"resolution {size[0]}x{size[1]} is not supported; allowed: 64x64, 128x128")
    assert "384x512" in message and "1024x256" in message and "\n" not in message
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)


def test_parse_resolution():
    assert parse_resolution("384x768") == (384, 768)
    assert parse_resolution(" 512 ") == (512, 512)
    with pytest.raises(InvalidSetting, match="look like HxW"):
        parse_resolution("big")


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (dict(temperature=1.0, top_k=-5, top_p=1.0), "top_k must be >= 0"),
        (dict(temperature=1.0, top_k=2.5, top_p=1.0), "top_k must be an integer"),
        (dict(temperature=1.0, top_k=5, top_p=0.0), r"top_p must lie in \(0, 1\]"),
        (dict(temperature=1.0, top_k=5, top_p=1.5), r"top_p must lie in \(0, 1\]"),
        (dict(temperature=-0.1, top_k=5, top_p=1.0), "temperature must be >= 0"),
        (dict(temperature=float("nan"), top_k=5, top_p=1.0), "temperature must be a finite number"),
    ],
)
def test_bad_sampling_values_are_named(knobs, message):
    with pytest.raises(InvalidSetting, match=message):
        check_sampling(**knobs)


def test_sampling_checks_levels_and_spells_flags():
    assert check_sampling(0, 0, 1, {"pixel_top_k": 30.0, "semantic_top_p": None}) == {
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
        "pixel_top_k": 30,
    }
    with pytest.raises(InvalidSetting, match="--semantic-temperature must be > 0"):
        check_sampling(1.0, 5, 1.0, {"semantic_temperature": 0.0}, prefix="--")
    with pytest.raises(InvalidSetting, match=r"--top-k must be >= 0 .*got -5"):
        check_sampling(1.0, -5, 1.0, prefix="--")


def test_counts_and_context():
    assert check_count(3, "num_images") == 3
    for bad in (0, -1):
        with pytest.raises(InvalidSetting, match=f"num_images must be >= 1, got {bad}"):
            check_count(bad, "num_images")
    limits = ContextLimits(prompt=100, total=150)
    assert check_prompt_length(100, 50, limits) == 100
    with pytest.raises(InvalidSetting, match="101 tokens long; the model takes at most 100"):
        check_prompt_length(101, 0, limits)
    with pytest.raises(InvalidSetting, match="context is 150 tokens"):
        check_prompt_length(100, 51, limits)


# ------------------------------------------------------------------ pipeline entry points
@pytest.fixture(scope="module")
def pipe(tiny_origin_dir, tiny_dualvitok_dir) -> IllumePipeline:  # noqa: F811
    return IllumePipeline.from_pretrained(tiny_origin_dir, dualvitok=tiny_dualvitok_dir, device="cpu")


def _long_text(pipe: IllumePipeline) -> str:
    """A caption longer than the model's prompt limit (one token per ' a')."""
    return " a" * (pipe.context.prompt + 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        *[
            (lambda p, s=size: p.generate_codes("a cat", resolution=s), f"{size[0]}x{size[1]} is not supported")
            for size in UNSUPPORTED
        ],
        (lambda p: p.edit_codes(Image.new("RGB", (64, 64)), "x", resolution=(80, 48)), "80x48 is not supported"),
        (lambda p: p.generate_codes("a cat", resolution=(256, 256), top_k=-5), "top_k must be >= 0"),
        (lambda p: p.generate_codes("a cat", resolution=(256, 256), pixel_top_p=2.0), "pixel_top_p must lie"),
        (lambda p: p.generate_codes([], resolution=(256, 256)), "no prompts"),
        (lambda p: p.generate_codes("a cat", resolution=(256, 256), batch_size=0), "batch_size must be >= 1"),
        (lambda p: p.understand(None, "hi", max_new_tokens=-1), "max_new_tokens must be >= 1"),
        (lambda p: p.understand(None, "hi", top_p=0), "top_p must lie"),
        (lambda p: p.chat([("user", "hi")], temperature=-1), "temperature must be >= 0"),
        (lambda p: p.chat([("user", "hi")], image_resolution=(80, 48)), "image_resolution 80x48"),
        (lambda p: p.chat([("system", "hi")]), "role 'system'"),
        (lambda p: p.generate_codes(_long_text(p), resolution=(256, 256)), "the model takes at most"),
        (lambda p: p.understand(None, _long_text(p), max_new_tokens=1), "the model takes at most"),
    ],
)
def test_pipeline_refuses_bad_settings_before_decoding(pipe, call, message):
    with pytest.raises(InvalidSetting, match=message):
        call(pipe)


def test_temperature_zero_is_greedy(pipe):
    picture = Image.new("RGB", (64, 48), (200, 40, 40))
    greedy = pipe.understand(picture, "What is this?", max_new_tokens=4)
    assert pipe.understand(picture, "What is this?", max_new_tokens=4, temperature=0, do_sample=True) == greedy


# ------------------------------------------------------------------ the CLI: exit 2, one line
@pytest.fixture
def model_flags(tiny_origin_dir, tiny_dualvitok_dir) -> list[str]:  # noqa: F811
    return ["--model", str(tiny_origin_dir), "--dualvitok", str(tiny_dualvitok_dir), "--device", "cpu"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["generate", "--resolution", "80x48"], "--resolution 80x48 is not supported; allowed: 64x64"),
        (["generate", "--resolution", "2048x2048"], "--resolution 2048x2048 is not supported"),
        (["generate", "--resolution", "16x16"], "--resolution 16x16 is not supported"),
        (["generate", "--top-k", "-5"], "--top-k must be >= 0"),
        (["generate", "--num-images", "0"], "--num-images must be >= 1"),
        (["edit", "--image", "x.png", "--instruction", "y", "--top-p", "0"], "--top-p must lie in (0, 1]"),
        (["chat", "--question", "hi", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 1"),
    ],
)
def test_cli_bad_settings_are_one_line_errors(model_flags, capsys, argv, expected):
    from illume.cli import main

    command, *options = argv
    text = ["--prompt", "a cat"] if command == "generate" else []
    assert main([command, *model_flags, *text, *options]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0]


def test_cli_too_long_prompt_exits_2_without_traceback(model_flags, tiny_origin_dir):  # noqa: F811
    """In a real process, through the loaded pipeline's own check."""
    import json

    limit = json.loads((tiny_origin_dir / "config.json").read_text())["tokenizer_model_max_length"]
    command = ["generate", *model_flags, "--resolution", "256x256", "--prompt", " a" * (limit + 1)]
    result = subprocess.run(
        [sys.executable, "-m", "illume.cli", *command], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr[-2000:]
    # (stderr may also carry the weight-loading progress bar)
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "the model takes at most" in errors[0] and "Traceback" not in result.stderr
