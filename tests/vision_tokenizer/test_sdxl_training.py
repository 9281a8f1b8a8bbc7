"""Decoder training on CPU: tiny SDXL-shaped folder, golden tiny DualViTok, two generated images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from PIL import Image
from safetensors.torch import load_file
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.sdxl import DECODER_SIZES, DualViTokSDXLDecoderPipeline, nearest_decoder_size
from vision_tokenizer.sdxl.components import widen_conv_in
from vision_tokenizer.sdxl.conditioning import (
    code_map_from_images,
    resize_to_latent_grid,
    zero_text_conditioning,
)
from vision_tokenizer.sdxl.data import BucketBatchSampler, DecoderImageDataset, find_image_records
from vision_tokenizer.sdxl.latents import encode_to_latents
from vision_tokenizer.sdxl.tiny import SDXL_SCHEDULER_CONFIG, save_tiny_sdxl, tiny_sdxl_components
from vision_tokenizer.sdxl.train import diffusion_loss, main, training_target
from vision_tokenizer.sdxl.train_config import DecoderTrainConfig
from vision_tokenizer.utils.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO_ROOT / "configs" / "example" / "sdxl_decoder" / "sdxl_decoder_tiny.py"
PAPER_CONFIG = REPO_ROOT / "configs" / "example" / "sdxl_decoder" / "sdxl_decoder_train.py"
TRAIN_SCRIPT = REPO_ROOT / "vision_tokenizer" / "scripts" / "train_sdxl_decoder.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny SDXL release folder (4-channel UNet) and two smooth random photos."""
    root = tmp_path_factory.mktemp("sdxl_training")
    save_tiny_sdxl(root / "sdxl", code_channels=0, seed=0)
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    for number, size in enumerate([(560, 530), (530, 600)]):
        coarse = (rng.random((6, 6, 3)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC).save(root / "images" / f"{number}.png")
    return root


@pytest.fixture(scope="module")
def dualvitok(golden):
    return DualViTok.from_pretrained(
        golden / "dualvitok_tiny_state_dict.safetensors", config=golden / "dualvitok_tiny_config.json"
    )


def training_args(workspace, golden, output_dir, *extra: str) -> list[str]:
    return [
        str(TINY_CONFIG),
        f"--model.sdxl_path={workspace / 'sdxl'}",
        f"--model.dualvitok_checkpoint={golden / 'dualvitok_tiny_state_dict.safetensors'}",
        f"--model.dualvitok_config={golden / 'dualvitok_tiny_config.json'}",
        f"--data.root={workspace / 'images'}",
        f"--train.output_dir={output_dir}",
        "--train.global_batch_size=1",
        "--train.micro_batch_size=1",
        *extra,
    ]


def read_metrics(output_dir) -> dict[int, dict]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return {row["step"]: row for row in map(json.loads, lines)}


def fixed_losses(unets, dualvitok, workspace) -> list[float]:
    """Loss of each UNet on both training images at fixed noise and four timesteps (not the run's RNG)."""
    dataset = DecoderImageDataset(find_image_records(workspace / "images"), [(512, 512)], random_flip=False)
    batch = [dataset[(i, 0)] for i in range(len(dataset))]
    generator = torch.Generator().manual_seed(123)
    vae = tiny_sdxl_components()[0]
    vae.load_state_dict(load_file(workspace / "sdxl" / "vae" / "diffusion_pytorch_model.safetensors"))
    latents = encode_to_latents(vae, torch.stack([b["target"] for b in batch]), generator)
    code_map = code_map_from_images(dualvitok, torch.stack([b["source"] for b in batch]))[0]
    code_map = resize_to_latent_grid(code_map, latents.shape[-2:])
    scheduler = DDPMScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    draws = [(torch.randn(latents.shape, generator=generator), torch.full((latents.shape[0],), t)) for t in (50, 300, 600, 900)]
    with torch.no_grad():
        return [
            float(np.mean([diffusion_loss(u, u.config, scheduler, latents, code_map, 11, n, t).item() for n, t in draws]))
            for u in unets
        ]


@pytest.mark.slow
def test_training_lowers_the_loss_checkpoints_load_and_resume_is_exact(workspace, golden, dualvitok, tmp_path):
    run = tmp_path / "run"
    main(training_args(workspace, golden, run, "--train.max_steps=2", "--train.checkpoint_every=1",
                              "--sample.every=2", "--sample.num_images=1", "--sample.num_inference_steps=1"))
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-0000001", "checkpoint-0000002"]  # no staging folder left behind
    assert Image.open(run / "samples" / "step_0000002.png").size == (512, 256)  # input | decoded, 256 px high
    first = read_metrics(run)
    assert sorted(first) == [1, 2] and "loss" in (run / "train.log").read_text()

    final = run / "checkpoints" / "checkpoint-0000002"
    start = UNet2DConditionModel.from_pretrained(workspace / "sdxl" / "unet")
    widen_conv_in(start, 16)
    trained = UNet2DConditionModel.from_pretrained(final / "unet")  # EMA weights
    trained.load_state_dict(load_file(final / "trainer" / "unet_raw.safetensors"))
    loss_trained, loss_start = fixed_losses([trained, start], dualvitok, workspace)
    assert loss_trained < loss_start

    pipe = DualViTokSDXLDecoderPipeline.from_pretrained(final, dualvitok=dualvitok)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 4 + 16
    image = pipe(vq_indices=(torch.zeros(1, 9, 9, dtype=torch.long), torch.zeros(1, 16, 16, dtype=torch.long)),
                 num_inference_steps=1).images[0]
    assert image.size == (512, 512)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / "checkpoint-0000001", resumed / "checkpoints" / "checkpoint-0000001")
    main(training_args(workspace, golden, resumed, "--train.max_steps=2", "--train.checkpoint_every=1"))
    second = read_metrics(resumed)
    assert sorted(second) == [2]
    assert second[2]["loss"] == first[2]["loss"] and second[2]["grad_norm"] == first[2]["grad_norm"]
    again = resumed / "checkpoints" / "checkpoint-0000002"
    for name in ("trainer/unet_raw.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        expected, actual = load_file(final / name), load_file(again / name)
        assert all(torch.equal(expected[k], actual[k]) for k in expected), name


def test_widened_unet_ignores_new_channels_until_trained():
    _, unet, _ = tiny_sdxl_components(code_channels=0, seed=1)
    original = {k: v.clone() for k, v in unet.state_dict().items()}
    latents = torch.randn(1, 4, 16, 16)
    hidden, added = zero_text_conditioning(unet.config, 1, 11, latents.device, latents.dtype)
    with torch.no_grad():
        before = unet(latents, 10, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
        widen_conv_in(unet, 64)
        codes = torch.randn(1, 64, 16, 16)
        after = unet(torch.cat([latents, codes], 1), 10, encoder_hidden_states=hidden, added_cond_kwargs=added).sample
    assert unet.config.in_channels == 68 and unet.conv_in.weight.shape == (8, 68, 3, 3)
    assert torch.equal(unet.conv_in.weight[:, :4], original["conv_in.weight"])
    assert not unet.conv_in.weight[:, 4:].any()
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-6)


def test_training_targets_follow_the_prediction_type():
    latents, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    timesteps = torch.tensor([10, 700])
    epsilon = DDPMScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    assert torch.equal(training_target(epsilon, latents, noise, timesteps), noise)
    velocity = DDPMScheduler.from_config({**SDXL_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
    alpha_bar = velocity.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents
    torch.testing.assert_close(training_target(velocity, latents, noise, timesteps), expected)


def test_bucketing_assigns_sizes_and_splits_batches_over_ranks():
    assert nearest_decoder_size(1000, 1000) == (512, 512)  # square but smaller than 1024: no upscaling
    assert nearest_decoder_size(2000, 2100) == (1024, 1024)
    assert nearest_decoder_size(600, 800) == (1024, 768)  # (W, H): landscape 4:3
    assert nearest_decoder_size(3000, 700) == (512, 2048)
    assert nearest_decoder_size(800, 700, sizes=[(512, 512)]) == (512, 512)

    buckets = [0] * 10 + [1] * 7 + [2] * 3
    samplers = [BucketBatchSampler(buckets, global_batch=4, rank=r, world_size=2, seed=7) for r in range(2)]
    assert len(samplers[0]) == 10 // 4 + 7 // 4
    global_batches = samplers[0].global_batches(epoch=0)
    assert all(len({buckets[i] for i in batch}) == 1 and len(batch) == 4 for batch in global_batches)
    assert len({i for batch in global_batches for i in batch}) == 4 * len(global_batches)
    for number, batch in enumerate(global_batches):
        parts = [s.rank_batches(epoch=0)[number] for s in samplers]
        assert [i for part in parts for i, _ in part] == batch
    assert samplers[0].global_batches(0) == samplers[1].global_batches(0)
    assert samplers[0].global_batches(0) != samplers[0].global_batches(1)
    assert samplers[0].rank_batches(0, start=2) == samplers[0].rank_batches(0)[2:]
    with pytest.raises(ValueError, match="no size bucket holds a full batch"):
        BucketBatchSampler([0, 1, 2], global_batch=2, rank=0, world_size=1, seed=0)


def test_dataset_items_pair_the_target_with_its_half_size_source(workspace):
    dataset = DecoderImageDataset(find_image_records(workspace / "images"), DECODER_SIZES)
    item = dataset[(1, 5)]
    assert item["target"].shape == (3, 512, 512) and item["source"].shape == (3, 256, 256)
    assert item["size_index"] == 11
    assert torch.equal(dataset[(1, 5)]["target"], item["target"])
    pooled = torch.nn.functional.avg_pool2d(item["target"][None], 2)[0]
    assert (pooled - item["source"]).abs().mean() < 0.05  # the source is the same crop, downscaled


def test_configs_are_validated(workspace, golden, tmp_path):
    paper = DecoderTrainConfig.from_mapping(load_config(PAPER_CONFIG, ["--data.root=/data"]))
    assert paper.train.lr == 2e-5 and paper.train.global_batch_size == 128
    assert paper.data.sizes == list(DECODER_SIZES)
    assert paper.accumulation_steps(world_size=8) == 4
    with pytest.raises(ValueError, match="must be a multiple"):
        paper.accumulation_steps(world_size=3)
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        DecoderTrainConfig.from_mapping({**load_config(PAPER_CONFIG, ["--data.root=/d"]), "train": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="data.sizes"):
        DecoderTrainConfig.from_mapping(load_config(PAPER_CONFIG, ["--data.root=/d", "--data.sizes=[(640, 640)]"]))
    with pytest.raises(ValueError, match="exactly one of model.sdxl_path"):
        DecoderTrainConfig.from_mapping(load_config(PAPER_CONFIG, ["--data.root=/d", "--model.decoder_path=/x"]))


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_with_two_gloo_ranks(workspace, golden, tmp_path):
    output = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(TRAIN_SCRIPT),
        *training_args(workspace, golden, output, "--train.max_steps=1", "--train.checkpoint_every=1"),
        "--train.global_batch_size=2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trainer = output / "checkpoints" / "checkpoint-0000001" / "trainer"
    assert sorted(p.name for p in trainer.iterdir()) == [
        "rng_rank0.pt", "rng_rank1.pt", "state.pt", "unet_raw.safetensors"
    ]
    assert read_metrics(output)[1]["loss"] > 0
