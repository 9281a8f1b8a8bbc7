"""IllumePipeline on the golden tiny ILLUME+ (and tiny DualViTok): prompts, parity, batching, decoding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from illume.inference import IllumePipeline
from illume.inference.images import pad_to_anchor, unpad_to_original
from illume.inference.prompts import (
    EDITING,
    RANDOM_IMAGE,
    RECONSTRUCTION,
    TEXT_TO_IMAGE,
    Prompt,
    generation_prompt,
    understanding_message,
    understanding_prompt,
    user_message,
)
from illume.vocab import IMAGE_TOKEN_INDEX
from PIL import Image, ImageFilter
from safetensors.torch import load_file
from vision_tokenizer.data.image_io import psnr

from tests.conftest import golden_case_image, golden_question
from tests.illume.tiny_models import tiny_dualvitok_dir, tiny_origin_dir, tiny_sdxl_dir  # noqa: F401

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"


# Tiny models on 2 shared CI cores: thread hand-offs would dominate (fixture in tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pipe(tiny_origin_dir, tiny_dualvitok_dir) -> IllumePipeline:  # noqa: F811
    return IllumePipeline.from_pretrained(tiny_origin_dir, dualvitok=tiny_dualvitok_dir, device="cpu")


# ------------------------------------------------------------------ prompt strings (formats.md §4)
def test_prompt_strings_match_the_official_examples():
    cond = generation_prompt(user_message(TEXT_TO_IMAGE, 512, 512, "a cat with a hat."), 512, 512)
    assert cond == (
        SYSTEM
        + "Generate an image of <height_512><width_512>, the content of image is a cat with a hat.\n"
        + ASSISTANT
        + "<height_512><width_512>"
    )
    uncond = generation_prompt(user_message(RANDOM_IMAGE, 512, 512), 512, 512)
    assert (
        uncond
        == SYSTEM
        + "Generate a random image of <height_512><width_512>\n"
        + ASSISTANT
        + "<height_512><width_512>"
    )
    instruction = "Change the color of the boots to a deep forest green."
    edit = generation_prompt(user_message(EDITING, 512, 512, instruction), 512, 512)
    assert edit == (
        SYSTEM
        + "<height_512><width_512><image>\nPlease edit the image according to the instruction: "
        + instruction
        + "\n"
        + ASSISTANT
        + "<height_512><width_512>"
    )
    recon = generation_prompt(user_message(RECONSTRUCTION, 384, 768), 384, 768)
    assert recon == (
        SYSTEM
        + "<height_384><width_768><image>\nReconstruct the image according to the given image\n"
        + ASSISTANT
        + "<height_384><width_768>"
    )
    assert understanding_prompt(understanding_message("depict the image in short", 1)) == (
        SYSTEM + "<image>\ndepict the image in short" + ASSISTANT
    )


def test_user_text_with_braces_is_inserted_verbatim():
    assert user_message(TEXT_TO_IMAGE, 256, 256, "a {tag} and {content}").endswith(
        "is a {tag} and {content}\n"
    )


# ------------------------------------------------------------------ anchors
def test_pad_to_anchor_centres_the_contain_resized_image():
    image = Image.new("RGB", (500, 400), (10, 200, 30))
    placed = pad_to_anchor(image)
    assert placed.anchor == (384, 512)
    assert placed.box == (16, 0, 496, 384)
    assert placed.image.getpixel((5, 100)) == (255, 255, 255)
    assert placed.image.getpixel((250, 200)) == (10, 200, 30)


def test_unpad_restores_the_input_geometry_at_any_output_scale():
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(300, 451, 3, generator=g) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(3))
    placed = pad_to_anchor(image)
    assert unpad_to_original(placed.image, placed).size == image.size
    doubled = placed.image.resize((2 * placed.image.width, 2 * placed.image.height), Image.LANCZOS)
    back = unpad_to_original(doubled, placed)
    assert back.size == image.size and psnr(back, image) > 30


# ------------------------------------------------------------------ golden parity of the prompt path
def _golden_cases(golden: Path) -> list[Path]:
    return [
        p
        for p in sorted(golden.glob("mllm_tiny_*.safetensors"))
        if {"input_ids", "logits"} <= set(load_file(p))
    ]


def test_understanding_prompts_tokenize_like_the_golden_cases(pipe, golden):
    import json

    summary = json.loads((golden / "mllm_summary.json").read_text())
    for name in ("text_only", "one_image"):
        expected = load_file(golden / f"mllm_tiny_{name}.safetensors")["input_ids"][0].tolist()
        assert pipe._tokenize(Prompt.template(summary[name]["prompt"])) == expected
    message = understanding_message(golden_question(summary["one_image"]["prompt"]), 1)
    assert (
        pipe._tokenize(pipe.template.generation_prompt(message))
        == load_file(golden / "mllm_tiny_one_image.safetensors")["input_ids"][0].tolist()
    )


def test_engine_prefill_reproduces_golden_next_token_logits(pipe, golden):
    image = golden_case_image(golden)
    for case in _golden_cases(golden):
        tensors = load_file(case)
        ids = tensors["input_ids"][0].tolist()
        images = [image] if IMAGE_TOKEN_INDEX in ids else []
        if len(images) != ids.count(IMAGE_TOKEN_INDEX):
            continue
        logits = pipe.engine.next_token_logits(pipe._prompt_embeddings([ids], images))
        torch.testing.assert_close(logits[0], tensors["logits"][0, -1], atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ tasks
def test_understand_batches_like_single_calls(pipe):
    picture = Image.new("RGB", (96, 64), (200, 40, 40))
    batched = pipe.understand([picture, None], ["What is this?", "Who are you?"], max_new_tokens=8)
    single = [
        pipe.understand(picture, "What is this?", max_new_tokens=8)[0],
        pipe.understand(None, "Who are you?", max_new_tokens=8)[0],
    ]
    assert batched == single
    streamed = "".join(pipe.stream_understand(picture, "What is this?", max_new_tokens=8))
    assert streamed == batched[0]


def test_generate_batches_like_single_calls_and_decodes(pipe):
    codes = pipe.generate_codes(
        ["a red square", "a blue circle"], resolution=(256, 256), seed=[3, 4], cfg_scale=2.0
    )
    alone = pipe.generate_codes("a blue circle", resolution=(256, 256), seed=4, cfg_scale=2.0)
    assert torch.equal(codes[1].semantic, alone[0].semantic) and torch.equal(codes[1].pixel, alone[0].pixel)
    assert codes[0].semantic.shape == (9, 9) and codes[0].pixel.shape == (16, 16)
    images = pipe.decode(codes)
    assert [im.size for im in images] == [(256, 256), (256, 256)]


def test_edit_returns_the_input_size_or_the_anchor(pipe):
    picture = Image.new("RGB", (120, 90), (20, 120, 220))
    out = pipe.edit(picture, "make it green", resolution=(256, 256), seed=1)
    assert out[0].size == (120, 90)
    raw = pipe.edit(picture, "make it green", resolution=(256, 256), seed=1, unpad=False)
    assert raw[0].size == (256, 256)


def test_decoder_errors_are_clear(pipe):
    codes = pipe.generate_codes("x", resolution=(256, 256), cfg_scale=1.0)
    with pytest.raises(ValueError, match="sdxl_decoder"):
        pipe.decode(codes, decoder="sdxl")
    with pytest.raises(ValueError, match="decoder must be one of"):
        pipe.decode(codes, decoder="vae")


def test_sdxl_decoder_renders_at_twice_the_token_resolution(pipe, tiny_sdxl_dir):  # noqa: F811
    from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline

    decoder = DualViTokSDXLDecoderPipeline.from_pretrained(tiny_sdxl_dir, dualvitok=pipe.dualvitok)
    with_sdxl = IllumePipeline(pipe.model, pipe.tokenizer, pipe.dualvitok, decoder)
    codes = with_sdxl.generate_codes("x", resolution=(256, 256), cfg_scale=1.0)
    images = with_sdxl.decode(codes, decoder="sdxl", diffusion_steps=2)
    assert images[0].size == (512, 512)


def test_speculative_knob_keeps_greedy_codes_in_fewer_forward_passes(pipe):
    prompts = ["a red ball", "a tall tree"]
    counts, codes = {}, {}
    for mode in ("none", "jacobi"):
        codes[mode] = pipe.generate_codes(prompts, resolution=(128, 128), do_sample=False, speculative=mode)
        counts[mode] = pipe.last_forward_passes
    for plain, fast in zip(codes["none"], codes["jacobi"]):
        assert torch.equal(plain.semantic, fast.semantic) and torch.equal(plain.pixel, fast.pixel)
    assert 0 < counts["jacobi"] < counts["none"]
    with pytest.raises(ValueError, match="speculative must be one of"):
        pipe.generate_codes(prompts[0], resolution=(128, 128), speculative="medusa")


def test_offloaded_decoder_returns_to_the_cpu_and_decodes_alike(pipe, tiny_origin_dir, tiny_dualvitok_dir):  # noqa: F811
    offloaded = IllumePipeline.from_pretrained(
        tiny_origin_dir, dualvitok=tiny_dualvitok_dir, device="cpu", offload=True, quantize="none"
    )
    codes = pipe.generate_codes("a red ball", resolution=(64, 64))
    moves = []
    original_to = offloaded.dualvitok.to
    offloaded.dualvitok.to = lambda device: (moves.append(str(device)), original_to(device))[1]
    image = offloaded.decode(codes)[0]
    assert moves == ["cpu", "cpu"]  # to the pipeline's device for the call, then back
    assert list(image.getdata()) == list(pipe.decode(codes)[0].getdata())
