"""Training the SDXL decoder on DualViTok codes (the recipe the ILLUME+ release did not publish).

Per micro-batch: VAE latents of the 2S target image, the merged code map of the S image from the
frozen DualViTok (dropped to all-zero with probability `code_dropout`, the guidance unconditional),
noise and a uniform timestep, then MSE between the UNet output and the scheduler's training target
(epsilon, v or sample, from the scheduler config). Launch with
`torchrun --nproc_per_node N -m vision_tokenizer.sdxl CONFIG [--train.lr=1e-5 ...]`; a single
process without torchrun works too (CPU runs use the gloo backend when distributed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from vision_tokenizer.job_args import sdxl_train_parser
from vision_tokenizer.runtime.checkpoints import (
    capture_rng_state,
    log_offsets,
    restore_rng_state,
    rewind_logs,
    torch_save,
)
from vision_tokenizer.runtime.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_mean,
    init_distributed,
)
from vision_tokenizer.utils.config import load_config

from .checkpoint import TRAINER_DIR, checkpoint_dir, load_trainer_file, resolve_resume
from .components import load_decoder_components
from .conditioning import (
    code_map_channels,
    code_map_from_images,
    resize_to_latent_grid,
    zero_text_conditioning,
)
from .data import BatchStream, BucketBatchSampler, DecoderImageDataset, find_image_records
from .latents import encode_to_latents
from .pipeline import DualViTokSDXLDecoderPipeline
from .samples import render_sample_grid
from .train_config import DecoderTrainConfig

__all__ = ["training_target", "diffusion_loss", "DecoderTrainer", "train", "main"]

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_RAW_UNET_FILE = "unet_raw.safetensors"


def _dtype(name: str, key: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"{key} must be one of {sorted(_DTYPES)}; got {name!r}")
    return _DTYPES[name]


def training_target(
    noise_scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet should predict, per the scheduler's `prediction_type`."""
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported scheduler prediction_type {kind!r}")


def diffusion_loss(
    unet: torch.nn.Module,
    unet_config: Any,
    noise_scheduler: DDPMScheduler,
    latents: torch.Tensor,
    code_map: torch.Tensor,
    size_index: int,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """MSE of one denoising prediction; `unet` may be DDP-wrapped, hence the separate config."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    text_states, added_cond = zero_text_conditioning(
        unet_config, latents.shape[0], size_index, latents.device, latents.dtype
    )
    prediction = unet(
        torch.cat([noisy, code_map], dim=1),
        timesteps,
        encoder_hidden_states=text_states,
        added_cond_kwargs=added_cond,
        return_dict=False,
    )[0]
    target = training_target(noise_scheduler, latents, noise, timesteps)
    return F.mse_loss(prediction.float(), target.float())


class DecoderTrainer:
    """Owns the models, data stream, optimizer and state of one decoder training run."""

    def __init__(self, config: DecoderTrainConfig):
        self.config = config
        self.dist: DistContext = init_distributed()
        self.output_dir = Path(config.train.output_dir)
        self.checkpoints = checkpoint_dir(self.output_dir, config.train.checkpoints_total_limit)
        self.accumulation = config.accumulation_steps(self.dist.world_size)
        self.step = 0
        point = resolve_resume(self.output_dir, config.train.resume, set_aside=self.dist.is_main)
        resume = point.checkpoint.path if point is not None else None
        self._seed_everything(config.train.seed)
        self._build_models(resume)
        self._build_data()
        self._build_optimizer()
        if point is not None:
            self._restore(resume, point.state)
        elif config.train.resume == "latest" and self.dist.is_main:
            # An attempt killed before its first checkpoint logged steps that start over now.
            if rewind_logs(self.output_dir, {"metrics.jsonl": 0}):
                logger.warning("no complete checkpoint in %s: metrics.jsonl starts over", self.output_dir)
        self.train_unet: torch.nn.Module = self.unet
        if self.dist.enabled:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            self.train_unet = DistributedDataParallel(self.unet, device_ids=device_ids)

    # ------------------------------------------------------------------ construction

    def _seed_everything(self, seed: int) -> None:
        rank_seed = seed * 1000 + self.dist.rank
        random.seed(rank_seed)
        torch.manual_seed(rank_seed)
        self.generator = torch.Generator(self.dist.device).manual_seed(rank_seed)

    def _build_models(self, resume: Path | None) -> None:
        from vision_tokenizer.models.dualvitok import DualViTok

        model, device = self.config.model, self.dist.device
        self.dualvitok = DualViTok.from_pretrained(
            model.dualvitok_checkpoint, use_ema=model.dualvitok_use_ema, config=model.dualvitok_config
        )
        self.dualvitok.to(device=device, dtype=_dtype(model.dualvitok_dtype, "model.dualvitok_dtype"))
        self.dualvitok.eval().requires_grad_(False)
        channels = code_map_channels(self.dualvitok)
        source = resume or model.decoder_path or model.sdxl_path
        self.vae, self.unet, self.inference_scheduler = load_decoder_components(
            source, channels, widen=source == model.sdxl_path
        )
        self.vae.to(device=device, dtype=_dtype(model.vae_dtype, "model.vae_dtype")).eval().requires_grad_(False)
        self.unet.to(device).train()
        if self.config.train.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.noise_scheduler = DDPMScheduler.from_config(self.inference_scheduler.config)
        self.ema: EMAModel | None = None
        if self.config.train.ema_decay is not None:
            # On resume unet/ holds the averaged weights; the raw ones are loaded in _restore.
            self.ema = EMAModel(self.unet.parameters(), decay=self.config.train.ema_decay, foreach=True)
        logger.info("decoder UNet from %s: %d parameters, %d code-map channels", source, self.unet.num_parameters(), channels)

    def _build_data(self) -> None:
        data = self.config.data
        records = find_image_records(data.root, data.sizes_file)
        self.dataset = DecoderImageDataset(records, data.sizes, data.random_flip)
        self.sampler = BucketBatchSampler(
            self.dataset.buckets(),
            self.config.train.micro_batch_size * self.dist.world_size,
            self.dist.rank,
            self.dist.world_size,
            self.config.train.seed,
        )
        self.stream = BatchStream(self.dataset, self.sampler, data.num_workers)
        logger.info("%d images in %d size buckets, %d global micro-batches per epoch",
                    len(records), len(set(self.dataset.buckets())), len(self.sampler))

    def _build_optimizer(self) -> None:
        train = self.config.train
        self.optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=train.lr, betas=train.adam_betas, eps=train.adam_eps, weight_decay=train.weight_decay
        )
        self.lr_scheduler = get_scheduler(
            train.lr_schedule, self.optimizer, num_warmup_steps=train.warmup_steps, num_training_steps=train.max_steps
        )

    def _restore(self, checkpoint: Path, state: dict[str, Any]) -> None:
        if self.ema is not None:
            raw = checkpoint / TRAINER_DIR / _RAW_UNET_FILE
            if raw.is_file():
                self.unet.load_state_dict(load_file(raw, device=str(self.dist.device)), strict=True)
            else:
                logger.warning("%s has no %s (saved without EMA): EMA restarts from its weights", checkpoint, _RAW_UNET_FILE)
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.step = int(state["step"])
        self.stream.epoch, self.stream.position = state["data"]["epoch"], state["data"]["position"]
        rng_file = checkpoint / TRAINER_DIR / f"rng_rank{self.dist.rank}.pt"
        if rng_file.is_file():
            restore_rng_state(
                load_trainer_file(checkpoint, rng_file.name), self.dist.device, {"generator": self.generator}
            )
        else:
            logger.warning("%s has no random state for rank %d (world size changed?): reseeding", checkpoint, self.dist.rank)
            self._seed_everything(self.config.train.seed + self.step)
        if self.dist.is_main and rewind_logs(self.output_dir, state.get("log_offsets") or {}):
            logger.info("continuing metrics.jsonl and train.log from step %d", self.step)
        logger.info("resumed from %s at step %d", checkpoint, self.step)

    # ------------------------------------------------------------------ one step

    def _autocast(self) -> contextlib.AbstractContextManager:
        use_bf16 = self.config.train.mixed_precision == "bf16" and self.dist.device.type == "cuda"
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()

    def micro_batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Loss of one micro-batch (forward only; all randomness from the run's generator)."""
        device, generator = self.dist.device, self.generator
        size_index = int(batch["size_index"][0])
        latents = encode_to_latents(self.vae, batch["target"].to(device), generator).float()
        code_map = code_map_from_images(self.dualvitok, batch["source"].to(device))[0].float()
        code_map = resize_to_latent_grid(code_map, latents.shape[-2:])
        keep = torch.rand(latents.shape[0], generator=generator, device=device) >= self.config.train.code_dropout
        code_map = code_map * keep.view(-1, 1, 1, 1)
        noise = torch.randn(latents.shape, generator=generator, device=device)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator, device=device
        )
        with self._autocast():
            return diffusion_loss(
                self.train_unet, self.unet.config, self.noise_scheduler, latents, code_map, size_index, noise, timesteps
            )

    def optimizer_step(self) -> dict[str, float]:
        """Accumulate gradients over the micro-batches of one step, then update; returns metrics."""
        total = torch.zeros((), device=self.dist.device)
        for micro in range(self.accumulation):
            batch = next(self.stream)
            last = micro == self.accumulation - 1
            sync = contextlib.nullcontext() if last or not self.dist.enabled else self.train_unet.no_sync()
            with sync:
                loss = self.micro_batch_loss(batch)
                (loss / self.accumulation).backward()
            total += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.config.train.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.unet.parameters())
        self.step += 1
        return {
            "step": self.step,
            "loss": all_reduce_mean({"loss": total / self.accumulation}, self.dist)["loss"],
            "grad_norm": float(grad_norm),
            "lr": self.lr_scheduler.get_last_lr()[0],
            "epoch": self.stream.epoch,
        }

    # ------------------------------------------------------------------ outputs

    @contextlib.contextmanager
    def _averaged_weights(self):
        """Temporarily put the EMA weights into the UNet (for saving and sampling)."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.unet.parameters())
        self.ema.copy_to(self.unet.parameters())
        try:
            yield
        finally:
            self.ema.restore(self.unet.parameters())

    def pipeline(self) -> DualViTokSDXLDecoderPipeline:
        pipe = DualViTokSDXLDecoderPipeline(
            vae=self.vae, unet=self.unet, scheduler=self.inference_scheduler, dualvitok=self.dualvitok
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def save_checkpoint(self) -> Path:
        """Write and publish `checkpoint-<step>` (all ranks take part; rank 0 writes)."""
        rng_states = all_gather_objects(
            capture_rng_state(self.dist.device, {"generator": self.generator}), self.dist
        )
        final = self.checkpoints.path_for(self.step)
        if self.dist.is_main:
            self.checkpoints.save(self.step, lambda staging: self._write_checkpoint(staging, rng_states))
            logger.info("saved %s", final)
        self.dist.barrier()
        return final

    def _write_checkpoint(self, staging: Path, rng_states: list[dict[str, Any]]) -> None:
        (staging / TRAINER_DIR).mkdir()
        if self.ema is not None:
            raw = {k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()}
            save_file(raw, staging / TRAINER_DIR / _RAW_UNET_FILE)
        with self._averaged_weights():
            self.pipeline().save_pretrained(staging)
        ema_state = None
        if self.ema is not None:
            ema_state = {k: v for k, v in self.ema.state_dict().items() if k != "shadow_params"}
        state = {
            "step": self.step,
            "data": self.stream.state(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "ema": ema_state,
            "world_size": self.dist.world_size,
            "log_offsets": log_offsets([self.output_dir / "metrics.jsonl", self.output_dir / "train.log"]),
        }
        torch_save(state, staging / TRAINER_DIR / "state.pt")
        for rank, rng in enumerate(rng_states):
            torch_save(rng, staging / TRAINER_DIR / f"rng_rank{rank}.pt")

    @torch.no_grad()
    def save_samples(self) -> Path:
        """Render the sample grid for the current step (main rank only)."""
        sample = self.config.sample
        count = min(sample.num_images, len(self.dataset))
        sources = [self.dataset[(i, sample.seed)]["source"] for i in range(count)]
        path = self.output_dir / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.unet.eval()
        try:
            with self._averaged_weights():
                render_sample_grid(
                    self.pipeline(), sources, path, sample.num_inference_steps, sample.guidance_scale, sample.seed
                )
        finally:
            self.unet.train()
        logger.info("wrote %s", path)
        return path

    # ------------------------------------------------------------------ the loop

    def run(self) -> Path | None:
        """Train to `max_steps`; returns the last checkpoint written (None if nothing was to do)."""
        train, sample = self.config.train, self.config.sample
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.json").write_text(json.dumps(dataclasses.asdict(self.config), indent=2))
        if self.dist.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
        logger.info(
            "training to step %d: %d ranks x %d images x %d accumulation = %d per step, lr %g",
            train.max_steps, self.dist.world_size, train.micro_batch_size, self.accumulation,
            train.global_batch_size, train.lr,
        )
        last = None
        progress = tqdm(total=train.max_steps, initial=self.step, disable=not self.dist.is_main, desc="sdxl decoder")
        metrics_file = self.output_dir / "metrics.jsonl"
        while self.step < train.max_steps:
            metrics = self.optimizer_step()
            progress.update()
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
            if self.dist.is_main and (self.step % train.log_every == 0 or self.step == train.max_steps):
                with open(metrics_file, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(metrics) + "\n")
                logger.info("step %(step)d  loss %(loss).5f  grad_norm %(grad_norm).3f  lr %(lr).3e  epoch %(epoch)d", metrics)
            if self.step % train.checkpoint_every == 0 or self.step == train.max_steps:
                last = self.save_checkpoint()
            if self.dist.is_main and sample.every and self.step % sample.every == 0:
                self.save_samples()
        progress.close()
        return last


def _configure_logging(output_dir: Path, is_main: bool) -> list[logging.Handler]:
    package_logger = logging.getLogger("vision_tokenizer")
    package_logger.setLevel(logging.INFO if is_main else logging.WARNING)
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package_logger.addHandler(handler)
    return handlers


def train(config: DecoderTrainConfig) -> Path | None:
    """Run (or resume) one training run in this process; see the module docstring."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    handlers = _configure_logging(Path(config.train.output_dir), is_main)
    try:
        return DecoderTrainer(config).run()
    finally:
        for handler in handlers:
            logging.getLogger("vision_tokenizer").removeHandler(handler)
            handler.close()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m vision_tokenizer.sdxl CONFIG [--section.key=value ...]`."""
    args, overrides = sdxl_train_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    config = DecoderTrainConfig.from_mapping(load_config(args.config, overrides))
    try:
        train(config)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
