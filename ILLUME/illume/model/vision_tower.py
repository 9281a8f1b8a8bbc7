"""`DualVisionTower`: the two DualViTok encoders that feed continuous image features to the LLM.

The MLLM keeps only the semantic ViT (incl. its 2x2 merger, 3584-d output) and the MoVQ pixel
encoder (32-d output before `pixel_quant_conv`) of a DualViTok; their fine-tuned weights live in
the MLLM checkpoint under `model.vision_tower.{semantic_encoder,pixel_encoder}.*`. So the tower
is built from the DualViTok *architecture* config alone: no tokenizer checkpoint, no Hub access,
no quantizers or decoders (the official tower builds and loads a whole DualViTok first).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from vision_tokenizer.models.configuration_dualvitok import DualViTokConfig, read_dualvitok_config
from vision_tokenizer.models.movq import MoVQConfig, MoVQEncoder
from vision_tokenizer.models.vit import build_vit, vit_config, vit_features
from vision_tokenizer.models.vit_input import prepare_vit_input

from illume.model.configuration_illume import VisionTowerConfig
from illume.vocab import PIXEL_PATCH, ImageGrid

__all__ = ["load_vq_model_config", "TowerOutput", "DualVisionTower"]


def load_vq_model_config(
    vq_config: str | os.PathLike | Mapping[str, Any] | DualViTokConfig,
    search_dirs: Sequence[str | os.PathLike] = (),
    allow_python: bool = True,
) -> dict[str, Any]:
    """The official DualViTok `vq_model` dict (`{type, config, ...}`) of any config source.

    For configs the user names (training configs, `--dualvitok-config`): official names resolve to
    the configs shipped in `vision_tokenizer`; a .py config runs unless `allow_python=False`.
    """
    return read_dualvitok_config(vq_config, search_dirs=tuple(search_dirs), allow_python=allow_python).to_vq_model()


@dataclass
class TowerOutput:
    """Per-image features in raster order: semantic [hs*ws, D_s], pixel [hp*wp, D_p], and grids."""

    semantic: list[torch.Tensor]
    pixel: list[torch.Tensor]
    grids: list[ImageGrid]


class DualVisionTower(nn.Module):
    """Semantic ViT (+merger) and MoVQ pixel encoder of a DualViTok, built from configs (no files).

    Only the DualViTok architecture and `min_pixels` / `max_pixels` shape the tower (`vq_ckpt`,
    `use_ema`, ... are training-time loading hints and are ignored here on purpose: the MLLM
    checkpoint carries the tower weights).
    """

    def __init__(self, tower: VisionTowerConfig | Mapping[str, Any], dualvitok: DualViTokConfig) -> None:
        super().__init__()
        tower = tower if isinstance(tower, VisionTowerConfig) else VisionTowerConfig.from_dict(tower)
        semantic = dualvitok.semantic_encoder
        vit_spec = dualvitok.semantic_vit_config or semantic["semantic_encoder"]
        vit_cfg = vit_config(vit_spec, semantic.get("attn_implementation", "sdpa"))
        self.semantic_encoder = build_vit(vit_cfg)
        self.pixel_encoder = MoVQEncoder(MoVQConfig.from_dict(dualvitok.pixel_encoder))
        self.min_pixels = tower.min_pixels
        self.max_pixels = tower.max_pixels
        self.merge_size = vit_cfg.spatial_merge_size

    @property
    def hidden_size(self) -> list[int]:
        """Feature sizes [semantic, pixel] (3584 and 32 for the released model)."""
        return [self.semantic_encoder.config.hidden_size, self.pixel_encoder.config.z_channels]

    def _check_images(
        self, images: torch.Tensor | Sequence[torch.Tensor], enforce_pixel_limits: bool
    ) -> list[torch.Tensor]:
        batch = (
            list(images.unbind(0)) if isinstance(images, torch.Tensor) and images.ndim == 4 else list(images)
        )
        checked = []
        for i, image in enumerate(batch):
            if image.ndim == 3:
                image = image.unsqueeze(0)
            if image.ndim != 4 or image.shape[:2] != (1, 3):
                raise ValueError(f"image {i}: expected [1, 3, H, W] or [3, H, W], got {tuple(image.shape)}")
            height, width = image.shape[-2:]
            if height % PIXEL_PATCH or width % PIXEL_PATCH:
                raise ValueError(f"image {i}: size {height}x{width} is not a multiple of {PIXEL_PATCH}")
            if enforce_pixel_limits and not self.min_pixels <= height * width <= self.max_pixels:
                raise ValueError(
                    f"image {i}: {height}x{width} = {height * width} pixels is outside the tower's "
                    f"[{self.min_pixels}, {self.max_pixels}]; resize it first "
                    "(vision_tokenizer.data.image_io.image_to_tensor(img, min_pixels, max_pixels))"
                )
            checked.append(image)
        if not checked:
            raise ValueError("no images given")
        return checked

    def _pixel_features(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """[hp*wp, z] per image; equal-sized images share one encoder call."""
        if all(img.shape == images[0].shape for img in images):
            maps = list(self.pixel_encoder(torch.cat(images)).unbind(0))
        else:
            maps = [self.pixel_encoder(img)[0] for img in images]
        return [m.flatten(1).transpose(0, 1) for m in maps]

    def forward(
        self, images: torch.Tensor | Sequence[torch.Tensor], *, enforce_pixel_limits: bool = True
    ) -> TowerOutput:
        """Encode [-1, 1] images (a [B,3,H,W] tensor or a list of [1,3,H,W] tensors of any sizes).

        `enforce_pixel_limits=False` admits images outside [min_pixels, max_pixels] (only the
        training placeholder needs that); sides must still be multiples of 16.
        """
        weight = next(self.pixel_encoder.parameters())  # `.conv_in.weight` would gather under ZeRO-3
        batch = [
            img.to(device=weight.device, dtype=weight.dtype)
            for img in self._check_images(images, enforce_pixel_limits)
        ]
        patches, grid_thw = prepare_vit_input(batch)
        rows = vit_features(self.semantic_encoder, patches.to(weight.dtype), grid_thw)
        sem_grids = [(h // self.merge_size, w // self.merge_size) for h, w in grid_thw[:, 1:].tolist()]
        semantic = list(rows.split([h * w for h, w in sem_grids]))
        pixel = self._pixel_features(batch)
        grids = [
            ImageGrid(sem, (img.shape[-2] // PIXEL_PATCH, img.shape[-1] // PIXEL_PATCH))
            for sem, img in zip(sem_grids, batch)
        ]
        return TowerOutput(semantic, pixel, grids)

    def encode_placeholder(self) -> TowerOutput:
        """Encode one all-zero 16 x 32 image: 1 x 2 pixel tokens, 1 semantic token (the ViT floors to 28²).

        It only exists so that training steps without input images still run every tower module
        (see `IllumeQwen2Model.idle_vision_term`), so it is as small as the architecture allows
        and below `min_pixels` on purpose. Two pixel positions, not one, because the encoder's
        GroupNorms refuse a single value per channel in training mode.
        """
        weight = next(self.pixel_encoder.parameters())
        return self([weight.new_zeros(1, 3, PIXEL_PATCH, 2 * PIXEL_PATCH)], enforce_pixel_limits=False)

    def tune(self, tune_vit_from_layer: int | None = None) -> None:
        """Stage-3 trainability: ViT blocks >= n and the merger; pixel-encoder parameters outside `down`.

        Without `tune_vit_from_layer` everything is trainable (SPEC-mllm C2).
        """
        for name, param in self.named_parameters():
            param.requires_grad = tune_vit_from_layer is None or _tuned(name, tune_vit_from_layer)

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()


def _tuned(name: str, first_layer: int) -> bool:
    branch, _, rest = name.partition(".")
    if branch == "pixel_encoder":
        return "down" not in rest
    if rest.startswith("merger."):
        return True
    if rest.startswith("blocks."):
        return int(rest.split(".")[1]) >= first_layer
    return False
