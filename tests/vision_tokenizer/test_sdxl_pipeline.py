"""DualViTokSDXLDecoderPipeline on CPU with the golden tiny DualViTok and tiny SDXL-shaped parts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from safetensors.torch import load_file
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.sdxl import DECODER_SIZES, DualViTokSDXLDecoderPipeline, resolution_index
from vision_tokenizer.sdxl.latents import denormalize_latents, normalize_latents
from vision_tokenizer.sdxl.tiny import save_tiny_sdxl, tiny_sdxl_components, tiny_vae_config

# The reference's list, verbatim ("(W, H)" strings); its order is baked into the checkpoint.
REFERENCE_SIZES = [
    "(1024, 1024)", "(768, 1024)", "(1024, 768)", "(512, 2048)", "(2048, 512)", "(640, 1920)",
    "(1920, 640)", "(768, 1536)", "(1536, 768)", "(768, 1152)", "(1152, 768)", "(512, 512)",
]
# MLLM anchors (H, W) and the 256x256 tokenizer evaluation size: all decoded at 2x.
TOKENIZER_SIZES = [
    (512, 512), (384, 512), (512, 384), (384, 768), (768, 384), (384, 576), (576, 384),
    (320, 960), (960, 320), (256, 1024), (1024, 256), (256, 256),
]


@pytest.fixture(scope="module")
def dualvitok(golden):
    return DualViTok.from_pretrained(
        golden / "dualvitok_tiny_state_dict.safetensors", config=golden / "dualvitok_tiny_config.json"
    )


@pytest.fixture(scope="module")
def code_channels(golden):
    """Channels of the tiny tokenizer's merged code map (16; 64 for the released one)."""
    return load_file(next(golden.glob("dualvitok_tiny_io_*.safetensors")))["decode.merged_quant"].shape[1]


@pytest.fixture()
def pipe(dualvitok, code_channels):
    vae, unet, scheduler = tiny_sdxl_components(code_channels, seed=0)
    pipeline = DualViTokSDXLDecoderPipeline(vae=vae, unet=unet, scheduler=scheduler, dualvitok=dualvitok)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def random_codes(batch: int, height: int, width: int, seed: int = 0):
    """Code grids for a 2x decode to height x width: pixel grid = tokenizer side / 16."""
    generator = torch.Generator().manual_seed(seed)
    semantic = torch.randint(0, 256, (batch, height // 56, width // 56), generator=generator)
    pixel = torch.randint(0, 768, (batch, height // 32, width // 32), generator=generator)
    return semantic, pixel


class UNetRecorder:
    """Forward hook storing every UNet call's input sample, keyword arguments and output."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs, output):
        sample = args[0] if args else kwargs["sample"]
        self.calls.append((sample.detach().clone(), kwargs, output[0].detach().clone()))

    def remove(self):
        self.handle.remove()


def test_size_list_is_the_reference_one():
    assert [f"({w}, {h})" for w, h in DECODER_SIZES] == REFERENCE_SIZES
    for height, width in TOKENIZER_SIZES:
        index = resolution_index(2 * height, 2 * width)
        assert REFERENCE_SIZES[index] == f"({2 * width}, {2 * height})"
    assert resolution_index(768, 1024) == 2  # H768 x W1024 is "(1024, 768)"


def test_unlisted_size_raises_before_any_model_runs(pipe):
    recorder = UNetRecorder(pipe.unet)
    codes = random_codes(1, 512, 512)
    with pytest.raises(ValueError, match="Allowed") as info:
        pipe(vq_indices=codes, height=640, width=640, num_inference_steps=1)
    assert "height=640, width=640" in str(info.value) and "768x1024" in str(info.value)
    with pytest.raises(ValueError, match="height=448, width=448"):
        pipe(vq_indices=random_codes(1, 448, 448), num_inference_steps=1)  # default 2x size, unlisted
    recorder.remove()
    assert recorder.calls == []


@pytest.mark.parametrize(("height", "width", "batch"), [(512, 512, 2), (768, 1024, 1)])
def test_pipeline_decodes_at_listed_sizes(pipe, height, width, batch):
    out = pipe(vq_indices=random_codes(batch, height, width), num_inference_steps=2)
    assert len(out.images) == batch
    assert all(image.size == (width, height) for image in out.images)
    assert out.indices_semantic is None and out.indices_pixel is None


def test_generator_makes_runs_reproducible(pipe):
    codes = random_codes(2, 512, 512)
    first, again, other = (
        pipe(vq_indices=codes, num_inference_steps=2, generator=torch.Generator().manual_seed(seed), output_type="latent").images
        for seed in (1, 1, 2)
    )
    torch.testing.assert_close(first, again, atol=0, rtol=0)
    assert not torch.allclose(first, other)


def test_per_image_generators_make_rows_independent(pipe):
    codes = random_codes(2, 512, 512)
    both = pipe(vq_indices=codes, num_inference_steps=1, output_type="latent",
                generator=[torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]).images
    single = pipe(vq_indices=(codes[0][1:], codes[1][1:]), num_inference_steps=1, output_type="latent",
                  generator=[torch.Generator().manual_seed(6)]).images
    torch.testing.assert_close(both[1:], single)
    with pytest.raises(ValueError, match="generators"):
        pipe(vq_indices=codes, num_inference_steps=1, generator=[torch.Generator()])


def _golden_cases(golden):
    cases = sorted(golden.glob("dualvitok_tiny_io_*.safetensors"))
    assert cases, "no golden dualvitok_tiny_io_* files"
    return cases


def test_conditioning_matches_hand_built(pipe, golden):
    """The UNet sees [latents | zeros] and [latents | 4x nearest code map], zero text, size-index time ids."""
    for case in _golden_cases(golden):
        tensors = load_file(case)
        image = tensors["image"]
        height, width = 2 * image.shape[-2], 2 * image.shape[-1]
        codes = (tensors["encode.indices_semantic"], tensors["encode.indices_pixel"])
        if f"({width}, {height})" not in REFERENCE_SIZES:
            with pytest.raises(ValueError, match="Allowed"):
                pipe(vq_indices=codes, num_inference_steps=1)
            continue
        # Independent expectation: the golden merged map, each code repeated over a 4x4 latent block.
        merged = tensors["decode.merged_quant"]
        expected = merged.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
        recorder = UNetRecorder(pipe.unet)
        pipe(vq_indices=codes, num_inference_steps=2, guidance_scale=3.0, output_type="latent")
        recorder.remove()
        assert len(recorder.calls) == 2
        for sample, kwargs, _ in recorder.calls:
            assert sample.shape == (2, 4 + merged.shape[1], height // 8, width // 8)
            torch.testing.assert_close(sample[0, 4:], torch.zeros_like(expected[0]), atol=0, rtol=0)
            torch.testing.assert_close(sample[1, 4:], expected[0], atol=1e-4, rtol=1e-4)
            assert not kwargs["encoder_hidden_states"].any()
            assert kwargs["encoder_hidden_states"].shape == (2, 77, pipe.unet.config.cross_attention_dim)
            assert not kwargs["added_cond_kwargs"]["text_embeds"].any()
            time_ids = torch.tensor([[0, 0, 0, 0, 0, REFERENCE_SIZES.index(f"({width}, {height})")]] * 2)
            torch.testing.assert_close(kwargs["added_cond_kwargs"]["time_ids"], time_ids.float())
            torch.testing.assert_close(sample[0, :4], sample[1, :4], atol=0, rtol=0)


def test_images_are_tokenized_by_the_dualvitok(pipe, dualvitok, golden):
    tensors = load_file(_golden_cases(golden)[0])
    image = tensors["image"]
    out = pipe(images=image, num_inference_steps=1, output_type="pt")
    assert out.images.shape == (1, 3, 2 * image.shape[-2], 2 * image.shape[-1])
    assert torch.equal(out.indices_semantic, tensors["encode.indices_semantic"])
    assert torch.equal(out.indices_pixel, tensors["encode.indices_pixel"])


def test_no_guidance_runs_one_branch_and_rescale_matches_conditional_std(pipe):
    codes = random_codes(1, 512, 512)
    recorder = UNetRecorder(pipe.unet)
    pipe(vq_indices=codes, num_inference_steps=1, guidance_scale=1.0, output_type="latent")
    assert recorder.calls[0][0].shape[0] == 1
    recorder.calls.clear()

    guided = []
    original_step = pipe.scheduler.step
    pipe.scheduler.step = lambda prediction, *a, **k: (guided.append(prediction.clone()), original_step(prediction, *a, **k))[1]
    try:
        pipe(vq_indices=codes, num_inference_steps=1, guidance_scale=4.0, guidance_rescale=1.0, output_type="latent")
    finally:
        del pipe.scheduler.step
    recorder.remove()
    conditional = recorder.calls[0][2][1:]
    assert not torch.allclose(guided[0], conditional)
    torch.testing.assert_close(guided[0].std(), conditional.std(), rtol=1e-4, atol=1e-6)


def test_dtype_stays_with_the_caller(pipe, dualvitok):
    tokenizer_dtype = next(dualvitok.parameters()).dtype
    pipe.to(torch.bfloat16)
    try:
        assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
        assert pipe.dtype == torch.bfloat16
        assert all(p.dtype == tokenizer_dtype for p in dualvitok.parameters())
        latents = pipe(vq_indices=random_codes(1, 512, 512), num_inference_steps=1, output_type="latent").images
        assert latents.dtype == torch.bfloat16
        pipe.to("cpu")
        assert all(p.dtype == tokenizer_dtype for p in dualvitok.parameters())
    finally:
        pipe.to(torch.float32)


def test_bad_sources_and_callbacks(pipe):
    codes = random_codes(1, 512, 512)
    with pytest.raises(ValueError, match="exactly one of"):
        pipe(num_inference_steps=1)
    with pytest.raises(ValueError, match="exactly one of"):
        pipe(vq_indices=codes, images=torch.zeros(1, 3, 256, 256), num_inference_steps=1)
    with pytest.raises(ValueError, match="must be a pair"):
        pipe(vq_indices=codes[1], num_inference_steps=1)
    with pytest.raises(ValueError, match="not among"):
        pipe(vq_indices=codes, num_inference_steps=1, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    seen = []

    def zero_latents(pipeline, step, timestep, tensors):
        seen.append(step)
        return {"latents": torch.zeros_like(tensors["latents"])}

    out = pipe(vq_indices=codes, num_inference_steps=2, output_type="latent", callback_on_step_end=zero_latents)
    assert seen == [0, 1] and not out.images.any()


def test_missing_tokenizer_and_wrong_unet_width_are_reported(dualvitok, code_channels):
    vae, unet, scheduler = tiny_sdxl_components(code_channels)
    bare = DualViTokSDXLDecoderPipeline(vae=vae, unet=unet, scheduler=scheduler)
    with pytest.raises(ValueError, match="no `dualvitok`"):
        bare(vq_indices=random_codes(1, 512, 512))
    vae, unet, scheduler = tiny_sdxl_components(64)  # the released width, wrong for the tiny tokenizer
    wide = DualViTokSDXLDecoderPipeline(vae=vae, unet=unet, scheduler=scheduler, dualvitok=dualvitok)
    with pytest.raises(ValueError, match=f"in_channels is 68.*{code_channels} code-map"):
        wide(vq_indices=random_codes(1, 512, 512), num_inference_steps=1)


def test_released_folder_layout_loads_and_round_trips(tmp_path, golden, dualvitok, code_channels):
    folder = tmp_path / "dualvitok-sdxl-decoder"
    save_tiny_sdxl(folder, code_channels=code_channels, seed=3)
    # model_index.json as the reference pipeline writes it (its class name, null text parts).
    index = {
        "_class_name": "StableDiffusionXLDecoderPipeline",
        "_diffusers_version": "0.31.0",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "vq_model_embedder": [None, None],
        "text_encoder": [None, None],
        "text_encoder_2": [None, None],
        "tokenizer": [None, None],
        "tokenizer_2": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = DualViTokSDXLDecoderPipeline.from_pretrained(
        folder,
        dualvitok=golden / "dualvitok_tiny_state_dict.safetensors",
        dualvitok_config=golden / "dualvitok_tiny_config.json",
    )
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.unet.config.in_channels == 4 + code_channels
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert isinstance(pipe.dualvitok, DualViTok)
    expected = UNet2DConditionModel.from_pretrained(folder / "unet")
    for key, value in expected.state_dict().items():
        assert torch.equal(pipe.unet.state_dict()[key], value), key
    pipe.set_progress_bar_config(disable=True)
    first = pipe(vq_indices=random_codes(1, 512, 512), num_inference_steps=1, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images

    saved = tmp_path / "saved"
    pipe.save_pretrained(saved)
    written = json.loads((saved / "model_index.json").read_text())
    assert written["dualvitok"] == [None, None] and written["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert sorted(p.name for p in saved.iterdir()) == ["model_index.json", "scheduler", "unet", "vae"]
    reloaded = DualViTokSDXLDecoderPipeline.from_pretrained(saved, dualvitok=dualvitok)
    reloaded.set_progress_bar_config(disable=True)
    second = reloaded(vq_indices=random_codes(1, 512, 512), num_inference_steps=1, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(first, second)


def test_latent_normalisation_uses_vae_config():
    vae = AutoencoderKL.from_config({**tiny_vae_config(), "latents_mean": [1.0, 2.0, 3.0, 4.0],
                                     "latents_std": [2.0, 2.0, 4.0, 4.0], "scaling_factor": 0.5})
    raw = torch.arange(8.0).view(1, 4, 1, 2)
    normal = normalize_latents(vae, raw)
    mean = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    std = torch.tensor([2.0, 2.0, 4.0, 4.0]).view(1, 4, 1, 1)
    torch.testing.assert_close(normal, (raw - mean) * 0.5 / std)
    torch.testing.assert_close(denormalize_latents(vae, normal), raw)
    plain = AutoencoderKL.from_config(tiny_vae_config())
    torch.testing.assert_close(denormalize_latents(plain, raw), raw / 0.13025)
