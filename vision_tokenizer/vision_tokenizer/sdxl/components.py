"""Loading the decoder's diffusers components for training, and turning an SDXL UNet into one.

A new decoder starts from an SDXL release: its UNet gets `conv_in` widened from 4 to 4 + C input
channels (C = 64 code-map channels for the released tokenizer) with the new weights zero, so at
step 0 it behaves exactly like SDXL on the latents and learns to use the codes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from .conditioning import check_decoder_unet

__all__ = ["widen_conv_in", "load_scheduler", "load_decoder_components"]


@torch.no_grad()
def widen_conv_in(unet: UNet2DConditionModel, extra_channels: int) -> None:
    """Append `extra_channels` zero-initialised input channels to `unet.conv_in`, in place."""
    old = unet.conv_in
    new = nn.Conv2d(
        old.in_channels + extra_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )
    new.weight.zero_()
    new.weight[:, : old.in_channels].copy_(old.weight)
    new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=new.in_channels)


def load_scheduler(folder: str | os.PathLike) -> SchedulerMixin:
    """The scheduler class named in `<folder>/scheduler/scheduler_config.json`, from its config."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no scheduler config at {path}")
    with open(path, encoding="utf-8") as handle:
        name = json.load(handle).get("_class_name")
    scheduler_cls = getattr(diffusers, str(name), None)
    if not (isinstance(scheduler_cls, type) and issubclass(scheduler_cls, SchedulerMixin)):
        raise ValueError(f"{path}: _class_name {name!r} is not a diffusers scheduler")
    return scheduler_cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True)


def load_decoder_components(
    folder: str | os.PathLike, code_channels: int, widen: bool
) -> tuple[AutoencoderKL, UNet2DConditionModel, SchedulerMixin]:
    """(vae, unet, scheduler) from an SDXL (`widen=True`) or decoder folder, checked for the code map."""
    for sub in ("unet", "vae", "scheduler"):
        if not (Path(folder) / sub).is_dir():
            raise FileNotFoundError(f"{folder} has no {sub}/ folder (expected the diffusers SDXL layout)")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    if widen:
        widen_conv_in(unet, code_channels)
    check_decoder_unet(unet, vae.config.latent_channels, code_channels)
    return vae, unet, load_scheduler(folder)
