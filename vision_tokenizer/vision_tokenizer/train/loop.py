"""The DualViTok training loop (tokenizer + PatchGAN discriminator), single- or multi-process.

Per optimizer step (after `gradient_accumulation_steps` micro-batches):
1. generator: forward under autocast → `DualViTokLoss.generator_loss` → backward (DDP syncs
   on the last micro-batch) → unscale, clip → scheduler step → optimizer step → EMA;
2. discriminator: fresh gradients → `discriminator_loss` on the same real/reconstructed
   batches → backward → mean over ranks → clip → its own scheduler and optimizer step.
The discriminator is not wrapped in DDP (it runs twice per step, which DDP does not allow
between backwards); its gradients and BatchNorm statistics are averaged explicitly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import shutil
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from vision_tokenizer.data.datasets import build_dataset
from vision_tokenizer.data.sampler import ResolutionGroupedBatchSampler, collate_images
from vision_tokenizer.losses import DualViTokLoss
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.runtime.checkpoints import (
    CheckpointDir,
    capture_rng_state,
    restore_rng_state,
    torch_load,
)
from vision_tokenizer.runtime.distributed import (
    DistContext,
    all_gather_objects,
    all_reduce_mean,
    average_tensors,
    broadcast_module,
)
from vision_tokenizer.train.ema import ModelEMA
from vision_tokenizer.train.options import TrainOptions
from vision_tokenizer.train.run_logging import RunLogger, reconstruction_grid
from vision_tokenizer.train.schedule import AnnealingLR
from vision_tokenizer.utils.checkpoint import load_into, load_state_dict_file
from vision_tokenizer.utils.user_errors import UserError

__all__ = ["Trainer", "plain_config", "choose_start"]

logger = logging.getLogger(__name__)
# Modules that stay trainable with `finetune_decoder=True`.
_DECODER_MODULES = ("pixel_post_quant_conv", "pixel_decoder")


def plain_config(value: Any) -> Any:
    """mmengine Config / ConfigDict -> nested built-in dicts (what checkpoints may store)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    return value


def choose_start(cfg: Any, fresh: bool = False, overwrite: bool = False) -> None:
    """Set `cfg.resume` the way the command line promises: continue the run in `results_dir`
    when it has checkpoints (the default), or start over with `fresh`, which deletes an earlier
    run's checkpoints and logs only with `overwrite`."""
    run_dir = os.path.join(cfg.results_dir, str(cfg.vq_model.get("type", "DualViTok")))
    if not fresh:
        if not cfg.get("resume"):
            cfg.resume = "latest"
        return
    earlier = [
        os.path.join(run_dir, name)
        for name in ("checkpoints", "metrics.jsonl", "log.txt", "logs")
        if os.path.exists(os.path.join(run_dir, name))
    ]
    if earlier and not overwrite:
        raise UserError(
            f"--fresh: {run_dir} holds an earlier run ({', '.join(os.path.basename(p) for p in earlier)}); "
            "add --overwrite to delete it, or leave out --fresh to resume it"
        )
    for path in earlier:
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    if earlier:
        logger.warning("--fresh --overwrite: deleted the earlier run's %s", ", ".join(earlier))
    cfg.resume = None


def _is_training_checkpoint(state: Any) -> bool:
    return isinstance(state, dict) and "model" in state and "optimizer" in state and "steps" in state


def _training_state(path: Any) -> dict[str, Any]:
    """A training checkpoint's state, or an error saying why the file cannot be resumed from."""
    state = torch_load(path)
    if not _is_training_checkpoint(state):
        raise ValueError(f"{path} is not a training checkpoint (no model/optimizer/steps)")
    return state


class Trainer:
    """Builds everything from a loaded config and runs `run()`; see the module docstring."""

    def __init__(self, cfg: Any, ctx: DistContext, stop_after_steps: int | None = None) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.options = opts = TrainOptions.from_config(cfg)
        self.stop_after_steps = stop_after_steps
        self.device = ctx.device
        self.run_dir = os.path.join(opts.results_dir, str(cfg.vq_model.get("type", "DualViTok")))
        self.ckpt_dir = os.path.join(self.run_dir, "checkpoints")
        self.checkpoints = CheckpointDir(self.ckpt_dir, keep=opts.ckpt_keep)
        self.sample_dir = opts.sample_dir or os.path.join(self.run_dir, "samples")

        rank_seed = opts.global_seed * ctx.world_size + ctx.rank
        random.seed(rank_seed)
        np.random.seed(rank_seed % 2**32)
        torch.manual_seed(rank_seed)

        self.amp_dtype = self._amp_dtype(opts.mixed_precision)
        self.model = DualViTok.from_config(plain_config(cfg.vq_model)).to(self.device)
        self._set_trainable(self.model, opts.finetune_decoder)
        self.loss_fn = DualViTokLoss(plain_config(cfg.vq_loss)).to(self.device)
        # Ranks seed differently (noise, dropout); all must start from rank 0's weights.
        broadcast_module(self.model, ctx)
        broadcast_module(self.loss_fn, ctx)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.disc_params = list(self.loss_fn.discriminator.parameters())

        self.dataset = build_dataset(cfg.data_args.train)
        world_accum = ctx.world_size * opts.gradient_accumulation_steps
        global_batch = int(cfg.data_args.global_batch_size)
        if global_batch % world_accum:
            raise ValueError(
                f"data_args.global_batch_size={global_batch} is not divisible by world_size "
                f"{ctx.world_size} x gradient_accumulation_steps {opts.gradient_accumulation_steps}"
            )
        self.sampler = ResolutionGroupedBatchSampler(
            len(self.dataset),
            global_batch // world_accum,
            ctx.world_size,
            ctx.rank,
            seed=opts.global_seed,
            image_sizes=self.dataset.image_sizes if opts.use_group_image_resolution else None,
        )
        self.steps_per_epoch = len(self.sampler) // opts.gradient_accumulation_steps
        if self.steps_per_epoch < 1:
            raise ValueError("an epoch has fewer batches than gradient_accumulation_steps")
        self.total_steps = opts.epochs * self.steps_per_epoch
        if opts.max_steps:
            self.total_steps = min(self.total_steps, int(opts.max_steps))

        self.opt_g = self._optimizer(self.trainable)
        self.opt_d = self._optimizer(self.disc_params)
        warmup_iter = int(opts.warmup * self.total_steps)
        self.sched_g = AnnealingLR(
            self.opt_g,
            opts.lr,
            warmup_iter,
            self.total_steps,
            opts.lr_decay_style,
            decay_ratio=opts.lr_decay_ratio,
        )
        self.sched_d = AnnealingLR(
            self.opt_d,
            opts.lr,
            warmup_iter,
            self.total_steps,
            opts.lr_decay_style,
            decay_ratio=opts.lr_decay_ratio,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = ModelEMA(self.model, opts.ema_decay) if opts.ema else None

        self.step = 0
        self.epoch = 0
        self.next_batch = 0
        self.resumed_logs: dict[str, int] = {}
        self.set_aside: list[Any] = []
        self._initial_weights_or_resume()

        forward_model: nn.Module = torch.compile(self.model) if opts.compile else self.model
        if ctx.enabled:
            forward_model = DistributedDataParallel(
                forward_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self.forward_model = forward_model
        self.logger = RunLogger(self.run_dir, enabled=ctx.is_main, resume_step=self.step)
        # Lines written after the checkpoint by the run that was killed would be repeated.
        if self.logger.rewind(self.resumed_logs):
            logger.info("metrics.jsonl and the log continue from step %d", self.step)
        for path in self.set_aside:
            logger.warning("an unusable checkpoint was moved aside: %s", path)
        for key in opts.ignored_keys():
            if cfg.get(key):
                logger.info("config key %s=%r has no effect in this implementation", key, cfg.get(key))
        if opts.weight_decay and not opts.apply_weight_decay:
            logger.warning(
                "weight_decay=%s is ignored (official Adam has none); set apply_weight_decay=True "
                "to use AdamW with it",
                opts.weight_decay,
            )

    # ---- construction helpers -------------------------------------------------------------
    def _amp_dtype(self, name: str) -> torch.dtype | None:
        if name == "none":
            return None
        if name == "bf16":
            if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
                logger.warning("bf16 is not supported on this GPU: training in fp16 with a GradScaler")
                return torch.float16
            return torch.bfloat16
        return torch.float16

    @staticmethod
    def _set_trainable(model: nn.Module, decoder_only: bool) -> None:
        """The pretrained ViT is always frozen; `finetune_decoder` also freezes all but the decoder."""
        model.semantic_encoder.model.requires_grad_(False)
        if decoder_only:
            model.requires_grad_(False)
            for name in _DECODER_MODULES:
                getattr(model, name).requires_grad_(True)

    def _optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        opts = self.options
        betas = (opts.beta1, opts.beta2)
        if opts.apply_weight_decay:
            return torch.optim.AdamW(params, lr=opts.lr, betas=betas, weight_decay=opts.weight_decay)
        return torch.optim.Adam(params, lr=opts.lr, betas=betas, weight_decay=0.0)

    def _initial_weights_or_resume(self) -> None:
        opts = self.options
        if opts.resume == "latest":
            point = self.checkpoints.latest(_training_state, set_aside=self.ctx.is_main)
            if point is not None:
                self._resume(point.state, str(point.checkpoint.path))
                self.set_aside = point.set_aside
                return
            logger.info("resume=latest: no complete checkpoint in %s yet, starting a new run", self.ckpt_dir)
            # An attempt killed before its first checkpoint logged steps that start over now.
            self.resumed_logs = {"metrics.jsonl": 0}
        elif opts.resume:
            self._resume(_training_state(opts.resume), opts.resume)
            return
        path = opts.vq_ckpt
        if not path:
            return
        state = torch_load(path) if path.endswith((".pt", ".pth", ".bin")) and os.path.isfile(path) else None
        if _is_training_checkpoint(state) and not opts.finetune:
            self._resume(state, path)
        else:
            weights = load_state_dict_file(path)
            load_into(self.model, weights, strict=True, name=path)
            if self.ema is not None:
                self.ema = ModelEMA(self.model, opts.ema_decay)
            logger.info("initialised the tokenizer weights from %s", path)

    def _resume(self, state: dict[str, Any], path: str) -> None:
        load_into(self.model, state["model"], strict=True, name=f"{path}:model")
        self.loss_fn.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["optimizer"])
        self.opt_d.load_state_dict(state["optimizer_disc"])
        self.sched_g.load_state_dict(state["scheduler"])
        self.sched_d.load_state_dict(state["scheduler_disc"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" in state:
                self.ema.load_state_dict(state["ema"])
            else:
                logger.warning("%s has no EMA weights: the EMA restarts from the current weights", path)
        if self.loss_fn.lecam is not None and state.get("loss_state"):
            self.loss_fn.lecam.load_state_dict(state["loss_state"])
        self.step = int(state["steps"])
        data_state = state.get("data_state") or {}
        self.epoch = int(data_state.get("epoch", self.step // self.steps_per_epoch))
        self.next_batch = int(
            data_state.get(
                "next_batch", (self.step % self.steps_per_epoch) * self.options.gradient_accumulation_steps
            )
        )
        rng = state.get("rng") or []
        if len(rng) == self.ctx.world_size:
            restore_rng_state(rng[self.ctx.rank], self.device)
        else:
            logger.warning(
                "%s was written by %d ranks, this run has %d: random streams are re-seeded, "
                "so the continuation is not bit-exact",
                path,
                len(rng),
                self.ctx.world_size,
            )
        self.resumed_logs = state.get("log_offsets") or {}
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.next_batch
        )

    # ---- one optimizer step ---------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _clip(self, params: list[nn.Parameter], optimizer: torch.optim.Optimizer) -> torch.Tensor:
        self.scaler.unscale_(optimizer)
        grads = [p for p in params if p.grad is not None]
        max_norm = self.options.max_grad_norm if self.options.max_grad_norm > 0 else math.inf
        return torch.nn.utils.clip_grad_norm_(grads, max_norm)

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One generator and one discriminator update; returns this rank's named scalars."""
        self.model.train()
        self.loss_fn.train()
        count = len(micro_batches)
        logs: dict[str, torch.Tensor] = {}
        pairs = []
        last_layer = self.model.pixel_decoder.conv_out.weight
        for position, batch in enumerate(micro_batches):
            inputs = batch["image"].to(self.device, non_blocking=True)
            syncing = not self.ctx.enabled or position == count - 1
            sync = contextlib.nullcontext() if syncing else self.forward_model.no_sync()
            with sync:
                with self._autocast():
                    out = self.forward_model(inputs)
                    loss, step_logs = self.loss_fn.generator_loss(
                        inputs,
                        out.reconstruction,
                        out.pixel_loss,
                        (out.semantic_decoded, out.semantic_loss, out.semantic_target),
                        self.step,
                        last_layer,
                    )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"generator loss is {loss.item()} at step {self.step}: {step_logs}"
                    )
                self.scaler.scale(loss / count).backward()
            pairs.append((inputs, out.reconstruction.detach()))
            for name, value in step_logs.items():
                logs[name] = logs.get(name, 0) + value / count

        logs["train_grad_norm"] = self._clip(self.trainable, self.opt_g)
        self.sched_g.step()
        self.scaler.step(self.opt_g)
        self.opt_g.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)

        self.opt_d.zero_grad(set_to_none=True)
        for inputs, reconstruction in pairs:
            with self._autocast():
                loss_d, disc_logs = self.loss_fn.discriminator_loss(inputs, reconstruction, self.step)
            if not torch.isfinite(loss_d):
                raise FloatingPointError(
                    f"discriminator loss is {loss_d.item()} at step {self.step}: {disc_logs}"
                )
            self.scaler.scale(loss_d / count).backward()
            for name, value in disc_logs.items():
                logs[name] = logs.get(name, 0) + value / count
        for param in self.disc_params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        average_tensors([p.grad for p in self.disc_params], self.ctx)
        logs["train_grad_norm_disc"] = self._clip(self.disc_params, self.opt_d)
        self.sched_d.step()
        self.scaler.step(self.opt_d)
        self.scaler.update()
        self.opt_d.zero_grad(set_to_none=True)
        average_tensors([b for b in self.loss_fn.discriminator.buffers() if b.is_floating_point()], self.ctx)
        logs["lr"] = torch.tensor(self.opt_g.param_groups[0]["lr"])
        self._last_pair = pairs[-1]
        return logs

    # ---- checkpoints ----------------------------------------------------------------------
    def checkpoint_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "model": self.model.state_dict(),
            "optimizer": self.opt_g.state_dict(),
            "discriminator": self.loss_fn.discriminator.state_dict(),
            "optimizer_disc": self.opt_d.state_dict(),
            "scheduler": self.sched_g.state_dict(),
            "scheduler_disc": self.sched_d.state_dict(),
            "steps": self.step,
            "scaler": self.scaler.state_dict(),
            "data_state": {"epoch": self.epoch, "next_batch": self.next_batch},
            "config": plain_config(self.cfg),
            "world_size": self.ctx.world_size,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.loss_fn.lecam is not None:
            state["loss_state"] = self.loss_fn.lecam.state_dict()
        return state

    def save_checkpoint(self) -> str:
        rng_states = all_gather_objects(capture_rng_state(self.device), self.ctx)
        path = str(self.checkpoints.path_for(self.step))
        if self.ctx.is_main:
            state = self.checkpoint_state()
            state["rng"] = rng_states
            state["log_offsets"] = self.logger.offsets()
            self.checkpoints.save(self.step, lambda target: torch.save(state, target))
            logger.info("saved checkpoint %s", path)
        self.ctx.barrier()
        return path

    # ---- the run --------------------------------------------------------------------------
    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, self.next_batch)
        generator = torch.Generator().manual_seed(self.options.global_seed * 1_000_003 + self.epoch)
        return DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.options.num_workers,
            collate_fn=functools.partial(collate_images, anyres=self.options.training_with_anyres),
            pin_memory=self.device.type == "cuda",
            generator=generator,
        )

    def run(self) -> dict[str, Any]:
        opts = self.options
        accum = opts.gradient_accumulation_steps
        if self.ctx.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            self.cfg.dump(os.path.join(self.run_dir, "config.py"))
            logger.info(
                "training %d steps (%d per epoch) on %d rank(s), %d trainable parameters",
                self.total_steps,
                self.steps_per_epoch,
                self.ctx.world_size,
                sum(p.numel() for p in self.trainable),
            )
        progress = tqdm(total=self.total_steps, initial=self.step, disable=not self.ctx.is_main, desc="train")
        pending: dict[str, torch.Tensor] = {}
        pending_count = 0
        steps_this_call = 0
        last_ckpt = None
        epoch_batches = self.steps_per_epoch * accum
        while self.step < self.total_steps:
            iterator = iter(self._loader())
            for _ in range(self.steps_per_epoch - self.next_batch // accum):
                if self.step >= self.total_steps:
                    break
                logs = self.train_step([next(iterator) for _ in range(accum)])
                self.step += 1
                self.next_batch += accum
                if self.next_batch >= epoch_batches:
                    self.epoch, self.next_batch = self.epoch + 1, 0
                steps_this_call += 1
                progress.update(1)
                for name, value in logs.items():
                    pending[name] = pending.get(name, 0) + value.detach().float().cpu()
                pending_count += 1
                if self.step % opts.log_every == 0 or self.step == self.total_steps:
                    means = all_reduce_mean({k: v / pending_count for k, v in pending.items()}, self.ctx)
                    self.logger.scalars(self.step, means)
                    progress.set_postfix(loss=f"{means.get('gen_loss/total', float('nan')):.4f}")
                    pending, pending_count = {}, 0
                if self.step % opts.image_interval == 0 and self.ctx.is_main:
                    self.logger.image_grid(self.step, reconstruction_grid(*self._last_pair), self.sample_dir)
                if self.step % opts.ckpt_every == 0 or self.step == self.total_steps:
                    last_ckpt = self.save_checkpoint()
                if self.stop_after_steps is not None and steps_this_call >= self.stop_after_steps:
                    progress.close()
                    self.logger.close()
                    return {
                        "steps": self.step,
                        "checkpoint": last_ckpt,
                        "run_dir": self.run_dir,
                        "stopped": True,
                    }
        progress.close()
        self.logger.close()
        return {"steps": self.step, "checkpoint": last_ckpt, "run_dir": self.run_dir, "stopped": False}
