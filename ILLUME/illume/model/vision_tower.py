"""`DualVisionTower`: the two DualViTok encoders that feed continuous image features to the LLM.

The MLLM keeps only the semantic ViT (incl. its 2x2 merger, 3584-d output) and the MoVQ pixel
encoder (32-d output before `pixel_quant_conv`) of a DualViTok; their fine-tuned weights live in
the MLLM checkpoint under `model.vision_tower.{semantic_encoder,pixel_encoder}.*`. So the tower
is built from the DualViTok *architecture* config alone: no tokenizer checkpoint, no Hub access,
no quantizers or decoders (the official tower builds and loads a whole DualViTok first).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from vision_tokenizer.models.movq import MoVQConfig, MoVQEncoder
from vision_tokenizer.models.vit import build_vit, vit_config, vit_features
from vision_tokenizer.models.vit_input import prepare_vit_input
from vision_tokenizer.utils.config import load_config

from illume.vocab import PIXEL_PATCH, ImageGrid

__all__ = ["REPO_ROOT", "resolve_vq_config_path", "load_vq_model_config", "TowerOutput", "DualVisionTower"]

# The checkout root: official configs name `vq_config` relative to it
# (`configs/example/dualvitok/dualvitok_anyres_max512.py`), never relative to the CWD.
REPO_ROOT = Path(__file__).resolve().parents[3]

# Official defaults of the tower's image-size limits (stage-3 config: 32² … 768²).
_DEFAULT_MIN_PIXELS = 32 * 32
_DEFAULT_MAX_PIXELS = 768 * 768


def resolve_vq_config_path(path: str | os.PathLike, search_dirs: Sequence[str | os.PathLike] = ()) -> Path:
    """An absolute path as is; a relative one looked up in `search_dirs`, then the repository root."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        if not candidate.is_file():
            raise FileNotFoundError(f"vq_config file not found: {candidate}")
        return candidate
    tried = [Path(d) / candidate for d in search_dirs] + [REPO_ROOT / candidate]
    for option in tried:
        if option.is_file():
            return option
    raise FileNotFoundError(f"vq_config {str(path)!r} not found; looked at: {', '.join(map(str, tried))}")


def load_vq_model_config(
    vq_config: str | os.PathLike | Mapping[str, Any], search_dirs: Sequence[str | os.PathLike] = ()
) -> dict[str, Any]:
    """The DualViTok `vq_model` dict (`{type, config, ...}`) from a dict, a .py config or a .json file.

    A .py config contributes its `vq_model`; a .json file is either that dict itself (like the
    golden `dualvitok_tiny_config.json`) or a full config holding it under `vq_model`.
    """
    if isinstance(vq_config, Mapping):
        spec = dict(vq_config)
        source = "vq_config dict"
    else:
        path = resolve_vq_config_path(vq_config, search_dirs)
        source = str(path)
        if path.suffix == ".py":
            cfg = load_config(path)
            if "vq_model" not in cfg:
                raise KeyError(f"{path}: no 'vq_model' entry")
            spec = cfg.vq_model.to_dict()
        elif path.suffix == ".json":
            spec = json.loads(path.read_text())
        else:
            raise ValueError(f"vq_config must be a .py or .json file, got {path}")
    spec = dict(spec.get("vq_model", spec))
    if spec.get("type") != "DualViTok" or not isinstance(spec.get("config"), Mapping):
        raise ValueError(
            f"{source}: expected a DualViTok vq_model ({{'type': 'DualViTok', 'config': {{...}}}})"
        )
    for key in ("semantic_encoder", "pixel_encoder"):
        if key not in spec["config"]:
            raise KeyError(f"{source}: vq_model.config has no {key!r}")
    return spec


@dataclass
class TowerOutput:
    """Per-image features in raster order: semantic [hs*ws, D_s], pixel [hp*wp, D_p], and grids."""

    semantic: list[torch.Tensor]
    pixel: list[torch.Tensor]
    grids: list[ImageGrid]


class DualVisionTower(nn.Module):
    """Semantic ViT (+merger) and MoVQ pixel encoder of a DualViTok, built from the tower config.

    `tower_config` is the official `mm_vision_tower` dict; only `vq_config`, `min_pixels` and
    `max_pixels` shape the tower (`vq_ckpt`, `use_ema`, ... are training-time loading hints and
    are ignored here on purpose: the MLLM checkpoint carries the tower weights).
    """

    def __init__(
        self, tower_config: Mapping[str, Any], search_dirs: Sequence[str | os.PathLike] = ()
    ) -> None:
        super().__init__()
        if "vq_config" not in tower_config:
            raise KeyError("mm_vision_tower has no 'vq_config' (the DualViTok architecture config)")
        vq = load_vq_model_config(tower_config["vq_config"], search_dirs)
        semantic = vq["config"]["semantic_encoder"]
        # A saved JSON spells out the ViT hyper-parameters; a .py config names a built-in ViT.
        vit_spec = vq.get("_semantic_encoder_vit_config") or semantic["semantic_encoder"]
        vit_cfg = vit_config(vit_spec, semantic.get("attn_implementation", "sdpa"))
        self.semantic_encoder = build_vit(vit_cfg)
        self.pixel_encoder = MoVQEncoder(MoVQConfig.from_dict(vq["config"]["pixel_encoder"]))
        self.min_pixels = int(tower_config.get("min_pixels", _DEFAULT_MIN_PIXELS))
        self.max_pixels = int(tower_config.get("max_pixels", _DEFAULT_MAX_PIXELS))
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
