"""DualViTok: the ILLUME+ image tokenizer (semantic ViT branch + MoVQ pixel branch, two SimVQ codebooks).

An image gives two code grids: semantic codes (one per 28 x 28 pixels of the ViT input, "level 0")
and pixel codes (one per 16 x 16 pixels, "level 1"). The decoder upsamples the semantic codes to
the pixel grid, concatenates [semantic, pixel] channels and reconstructs the image from both.

Module and state-dict names follow the official checkpoint (see `manifests/`), so the released
weights load strictly. Images are [-1, 1] tensors: a [B, 3, H, W] batch, or a list of [1, 3, H, W]
(or [3, H, W]) images of different sizes; lists give lists back, one entry per image. Results are
dataclasses with named fields (`DualViTokEncoding`, `CodePair`, `DualViTokOutput`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..utils.checkpoint import load_into, load_state_dict_file
from .configuration_dualvitok import (
    QUANTIZER_KEYS,
    SEMANTIC_DECODER_KEYS,
    SEMANTIC_ENCODER_KEYS,
    DualViTokConfig,
    checked_keys,
    read_dualvitok_config,
)
from .movq import MoVQDecoder, MoVQEncoder
from .quantizer import SimVQ
from .semantic import SemanticDecoder, SemanticEncoder, rows_to_maps
from .vit import Qwen2VLVisionRotaryEmbedding, vit_config
from .vit_input import prepare_vit_input

__all__ = [
    "DualViTok",
    "DualViTokConfig",
    "CodePair",
    "SemanticEncoding",
    "PixelEncoding",
    "DualViTokEncoding",
    "DualViTokOutput",
    "CONFIG_FILE_NAME",
    "WEIGHTS_FILE_NAME",
]

CONFIG_FILE_NAME = "config.json"
WEIGHTS_FILE_NAME = "model.safetensors"

NOISE_TYPES = ("random", "zero")
MERGE_TYPES = ("cat",)

Images = torch.Tensor | Sequence[torch.Tensor]
Maps = torch.Tensor | list[torch.Tensor]


@dataclass
class CodePair:
    """Semantic and pixel maps of the same images: index grids or code vectors (tensors or lists).

    Unpacks as `semantic, pixel = pair`, the pair the official API returns.
    """

    semantic: Maps
    pixel: Maps

    def __iter__(self):
        yield self.semantic
        yield self.pixel


@dataclass
class SemanticEncoding:
    """Semantic branch: code vectors [B, d, hs, ws], commitment loss (scalar), indices [B, hs, ws],
    and the ViT features the semantic decoder learns to reconstruct [B, hidden, hs, ws]."""

    quant: Maps
    loss: torch.Tensor
    indices: Maps
    target: Maps


@dataclass
class PixelEncoding:
    """Pixel branch: code vectors [B, d, H/16, W/16], commitment loss (scalar), indices [B, H/16, W/16]."""

    quant: Maps
    loss: torch.Tensor
    indices: Maps


@dataclass
class DualViTokEncoding:
    semantic: SemanticEncoding
    pixel: PixelEncoding


@dataclass
class DualViTokOutput:
    """The training pass: decoded semantic features and their target, the reconstruction, both losses."""

    semantic_decoded: Maps
    semantic_target: Maps
    semantic_loss: torch.Tensor
    reconstruction: Maps
    pixel_loss: torch.Tensor


def _build_quantizer(section: str, values: Mapping[str, Any]) -> SimVQ:
    options = checked_keys(section, values, QUANTIZER_KEYS)
    kind = options.pop("type", "SimVQ")
    if kind != "SimVQ":
        raise ValueError(
            f"DualViTok config {section!r}: quantizer type {kind!r} is not supported (choices: ['SimVQ'])"
        )
    missing = sorted({"dim", "codebook_size"} - set(options))
    if missing:
        raise ValueError(f"DualViTok config {section!r} lacks {missing}")
    return SimVQ(**options)


@dataclass
class _Groups:
    """Items of a list batched by shape: `batches[g]` holds the items at `positions[g]`."""

    count: int
    positions: list[list[int]]
    outputs: list[Any]

    def gather(self, pick: Callable[[Any], torch.Tensor]) -> list[torch.Tensor]:
        """One [1, ...] tensor per original item, in list order, from the picked batched outputs."""
        result: list[Any] = [None] * self.count
        for positions, output in zip(self.positions, self.outputs):
            for position, item in zip(positions, pick(output).split(1)):
                result[position] = item
        return result

    def mean(self, pick: Callable[[Any], torch.Tensor], weight: Callable[[Any], int]) -> torch.Tensor:
        """A per-batch mean (a loss) as the mean over all items, weighted by `weight(output)`."""
        weights = [weight(out) for out in self.outputs]
        return sum(pick(out) * w for out, w in zip(self.outputs, weights)) / sum(weights)


def _over_items(fn: Callable[..., Any], *inputs: Images) -> Any:
    """The one tensor-or-list branch: `fn` on [B, ...] tensors as they are; lists (equally long,
    one [1, ...] or [C, H, W] entry per image) run `fn` once per group of equally shaped items
    and come back as `_Groups` for the caller to reassemble."""
    if all(isinstance(x, torch.Tensor) for x in inputs):
        return fn(*inputs)
    if any(isinstance(x, torch.Tensor) or not isinstance(x, Sequence) for x in inputs) or len(
        {len(x) for x in inputs}
    ) != 1:
        raise ValueError("inputs must all be tensors or all be lists of the same length")
    count = len(inputs[0])
    if count == 0:
        raise ValueError("no images given")
    items = [[_as_item(x[i], i) for x in inputs] for i in range(count)]
    groups: dict[tuple, list[int]] = {}
    for i, parts in enumerate(items):
        groups.setdefault(tuple(tuple(p.shape) for p in parts), []).append(i)
    positions = list(groups.values())
    outputs = [fn(*(torch.cat([items[i][k] for i in pos]) for k in range(len(inputs)))) for pos in positions]
    return _Groups(count, positions, outputs)


def _as_item(item: Any, index: int) -> torch.Tensor:
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"item {index} is a {type(item).__name__}, expected a torch.Tensor")
    return item


def _image_list(images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    checked = []
    for i, image in enumerate(images):
        image = _as_item(image, i)
        image = image.unsqueeze(0) if image.ndim == 3 else image
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image {i}: expected shape [1, 3, H, W] or [3, H, W], got {tuple(image.shape)}")
        checked.append(image)
    return checked


class DualViTok(nn.Module):
    """The dual tokenizer. Build it from a `DualViTokConfig`, `from_config` or `from_pretrained`."""

    config_class = DualViTokConfig

    def __init__(self, config: DualViTokConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else DualViTokConfig()
        if config.pixel_noise_type not in NOISE_TYPES:
            raise ValueError(f"pixel_noise_type must be one of {NOISE_TYPES}, got {config.pixel_noise_type!r}")
        if config.semantic_detail_merge_type not in MERGE_TYPES:
            raise ValueError(
                f"semantic_detail_merge_type must be one of {MERGE_TYPES}, got {config.semantic_detail_merge_type!r}"
            )
        self.config = config

        encoder_options = checked_keys("semantic_encoder", config.semantic_encoder, SEMANTIC_ENCODER_KEYS)
        vit_spec = encoder_options.pop("semantic_encoder", "Emova-ollm/qwen2vit600m")
        attn_implementation = encoder_options.get("attn_implementation", "sdpa")
        vit = vit_config(
            config.semantic_vit_config if config.semantic_vit_config is not None else vit_spec, attn_implementation
        )
        self.semantic_encoder = SemanticEncoder(vit, **encoder_options)
        self.semantic_quantizer = _build_quantizer("semantic_quantizer", config.semantic_quantizer)
        self.semantic_decoder = SemanticDecoder(
            **checked_keys("semantic_decoder", config.semantic_decoder, SEMANTIC_DECODER_KEYS)
        )

        encoder_config = config.pixel_encoder_config
        decoder_config = config.pixel_decoder_config
        self.pixel_encoder = MoVQEncoder(encoder_config)
        quantizer = _build_quantizer("pixel_quantizer", config.pixel_quantizer)
        self.pixel_quant_conv = nn.Conv2d(encoder_config.z_channels, quantizer.dim, kernel_size=1)
        self.pixel_quantizer = quantizer
        merged = self.semantic_quantizer.dim + quantizer.dim
        if decoder_config.embed_dim != merged:
            raise ValueError(
                f"pixel_decoder.embed_dim ({decoder_config.embed_dim}) must equal semantic + pixel code dims ({merged})"
            )
        self.pixel_post_quant_conv = nn.Conv2d(merged, decoder_config.z_channels, kernel_size=1)
        self.pixel_decoder = MoVQDecoder(decoder_config)

        self.pixel_drop_rate = config.pixel_drop_rate
        self.pixel_drop_batch_rate = config.pixel_drop_batch_rate
        self.pixel_noise_type = config.pixel_noise_type

    # ------------------------------------------------------------------ construction and I/O

    @classmethod
    def from_config(cls, cfg: DualViTokConfig | Mapping[str, Any] | str | os.PathLike) -> DualViTok:
        """Build from a `DualViTokConfig`, a vq_model dict, a whole loaded config, an official name,
        or a .json / .py file the caller names (a .py config is code and is executed)."""
        try:
            config = read_dualvitok_config(cfg, allow_python=True)
        except (TypeError, ValueError) as error:
            if isinstance(cfg, (str, os.PathLike)) and str(cfg) not in str(error):
                raise type(error)(f"{cfg}: {error}") from error
            raise
        return cls(config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        use_ema: bool = False,
        strict: bool = True,
        config: DualViTokConfig | Mapping[str, Any] | str | os.PathLike | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DualViTok:
        """Load weights from a file or folder in any official layout.

        Without `config`, the folder's `config.json` describes the model: ours (the vq_model
        dict) or the Hub folder's HF-style one; it is read as JSON, never executed. With
        `strict`, the model is built without initialising weights and takes the checkpoint's
        tensors directly; any missing, unexpected or mis-shaped key is an error naming the keys.
        """
        path = Path(path)
        if config is None:
            config_file = path / CONFIG_FILE_NAME if path.is_dir() else path.parent / CONFIG_FILE_NAME
            if not config_file.is_file():
                raise ValueError(
                    f"no {CONFIG_FILE_NAME} beside {path}; pass config= (a vq_model dict, .py or .json config)"
                )
            model_config = read_dualvitok_config(config_file)
        else:
            model_config = read_dualvitok_config(config, allow_python=True)
        state_dict = load_state_dict_file(path, use_ema=use_ema)
        if strict:
            with torch.device("meta"):
                model = cls(model_config)
            load_into(model, state_dict, strict=True, name=f"DualViTok ({path})", assign=True)
            model._reset_rotary_buffers()
        else:
            model = cls(model_config)
            load_into(model, state_dict, strict=False, name=f"DualViTok ({path})")
        model.eval()
        if device is not None or dtype is not None:
            model.to(device=device, dtype=dtype)
        return model

    def _reset_rotary_buffers(self) -> None:
        """Recompute the non-persistent RoPE frequencies (they are not in checkpoints) on the weights' device."""
        device = self.pixel_quantizer.frozen_codebook.device
        for module in self.modules():
            if isinstance(module, Qwen2VLVisionRotaryEmbedding):
                inv_freq, _ = module.compute_axial_rope_parameters(module.config)
                module.inv_freq = inv_freq.to(device)
                module.original_inv_freq = inv_freq.clone().to(device)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` (the official vq_model dict) and `model.safetensors` (the state dict)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE_NAME).write_text(json.dumps(self.config.to_vq_model(), indent=2) + "\n")
        state = {key: tensor.detach().contiguous().cpu() for key, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE_NAME), metadata={"format": "pt"})

    # ------------------------------------------------------------------ encoding

    def _encode_batch(self, images: torch.Tensor) -> DualViTokEncoding:
        patches, grid_thw = prepare_vit_input(images)
        z_rows, target_rows = self.semantic_encoder(patches, grid_thw)
        grid_hw = self.semantic_encoder.merged_grid(grid_thw)
        z_semantic = rows_to_maps(z_rows, grid_hw)
        target = rows_to_maps(target_rows, grid_hw)
        q_semantic, loss_semantic, idx_semantic = self.semantic_quantizer(z_semantic.float())

        h_pixel = self.pixel_quant_conv(self.pixel_encoder(images.to(self.pixel_quant_conv.weight.dtype)))
        q_pixel, loss_pixel, idx_pixel = self.pixel_quantizer(h_pixel.float())
        return DualViTokEncoding(
            SemanticEncoding(q_semantic, loss_semantic, idx_semantic, target),
            PixelEncoding(q_pixel, loss_pixel, idx_pixel),
        )

    def encode(self, images: Images) -> DualViTokEncoding:
        """Both branches' code vectors, commitment losses and indices (and the semantic target).

        For a list, every map is a list of [1, ...] tensors and each loss averages over all
        positions of all images.
        """
        if not isinstance(images, torch.Tensor):
            if not isinstance(images, Sequence):
                raise TypeError(
                    f"images must be a [B, 3, H, W] tensor or a list of tensors, got {type(images).__name__}"
                )
            images = _image_list(images)
        out = _over_items(self._encode_batch, images)
        if not isinstance(out, _Groups):
            return out
        return DualViTokEncoding(
            SemanticEncoding(
                out.gather(lambda o: o.semantic.quant),
                out.mean(lambda o: o.semantic.loss, lambda o: o.semantic.indices.numel()),
                out.gather(lambda o: o.semantic.indices),
                out.gather(lambda o: o.semantic.target),
            ),
            PixelEncoding(
                out.gather(lambda o: o.pixel.quant),
                out.mean(lambda o: o.pixel.loss, lambda o: o.pixel.indices.numel()),
                out.gather(lambda o: o.pixel.indices),
            ),
        )

    def encode_code(self, images: Images) -> CodePair:
        """Code grids: semantic [B, hs, ws] and pixel [B, H/16, W/16], or lists of [1, h, w] for a list."""
        encoding = self.encode(images)
        return CodePair(encoding.semantic.indices, encoding.pixel.indices)

    def _codes_batch(self, idx_semantic: torch.Tensor, idx_pixel: torch.Tensor) -> CodePair:
        return CodePair(
            self.semantic_quantizer.indices_to_codes(idx_semantic), self.pixel_quantizer.indices_to_codes(idx_pixel)
        )

    def indices_to_codes(self, idx_semantic: Images, idx_pixel: Images) -> CodePair:
        """Code vectors (semantic [B, d, hs, ws], pixel [B, d, hp, wp]) for index grids (or lists of grids)."""
        out = _over_items(self._codes_batch, idx_semantic, idx_pixel)
        if not isinstance(out, _Groups):
            return out
        return CodePair(out.gather(lambda o: o.semantic), out.gather(lambda o: o.pixel))

    # ------------------------------------------------------------------ decoding

    def _apply_pixel_noise(self, q_pixel: torch.Tensor) -> torch.Tensor:
        """Training-time code dropout: in a random subset of samples, replace random pixel codes.

        Dropped positions take the (detached) code at the same position of the previous sample
        ('random') or zero ('zero'), so the decoder learns to lean on the semantic codes.
        """
        batch = q_pixel.shape[0]
        sample_dropped = torch.rand(batch, 1, 1, 1, device=q_pixel.device) < self.pixel_drop_batch_rate
        position_dropped = (
            torch.rand(batch, 1, *q_pixel.shape[-2:], device=q_pixel.device) < self.pixel_drop_rate
        )
        if self.pixel_noise_type == "random":
            replacement = q_pixel.detach().roll(1, dims=0)
        else:
            replacement = torch.zeros_like(q_pixel)
        return torch.where(sample_dropped & position_dropped, replacement, q_pixel)

    def merge_quants(self, q_semantic: torch.Tensor, q_pixel: torch.Tensor) -> torch.Tensor:
        """[B, d_sem + d_pix, hp, wp]: semantic codes bicubically resized to the pixel grid, then pixel codes."""
        upsampled = F.interpolate(
            q_semantic.float(), size=q_pixel.shape[-2:], mode="bicubic", align_corners=False
        )
        upsampled = upsampled.to(q_semantic.dtype)
        if self.training and self.pixel_drop_rate:
            q_pixel = self._apply_pixel_noise(q_pixel)
        return torch.cat([upsampled, q_pixel.to(upsampled.dtype)], dim=1)

    def _decode_batch(self, q_semantic: torch.Tensor, q_pixel: torch.Tensor) -> torch.Tensor:
        dtype = self.pixel_post_quant_conv.weight.dtype
        quant = self.merge_quants(q_semantic, q_pixel).to(dtype)
        return self.pixel_decoder(self.pixel_post_quant_conv(quant), quant)

    def decode(self, q_semantic: Images, q_pixel: Images) -> Maps:
        """Images [B, 3, 16*hp, 16*wp] in about [-1, 1] from both code maps (lists give lists)."""
        out = _over_items(self._decode_batch, q_semantic, q_pixel)
        return out.gather(lambda o: o) if isinstance(out, _Groups) else out

    def decode_code(self, idx_semantic: Images, idx_pixel: Images) -> Maps:
        """Images from code indices: `decode(*indices_to_codes(...))`."""
        codes = self.indices_to_codes(idx_semantic, idx_pixel)
        return self.decode(codes.semantic, codes.pixel)

    def decode_semantic(self, q_semantic: Images) -> Maps:
        """Reconstructed (normalised) ViT features [B, hidden, hs, ws] from semantic codes."""
        return self.semantic_decoder(q_semantic)

    def forward(self, images: Images) -> DualViTokOutput:
        """The training pass: encode, then both decoders."""
        encoding = self.encode(images)
        semantic, pixel = encoding.semantic, encoding.pixel
        return DualViTokOutput(
            semantic_decoded=self.decode_semantic(semantic.quant),
            semantic_target=semantic.target,
            semantic_loss=semantic.loss,
            reconstruction=self.decode(semantic.quant, pixel.quant),
            pixel_loss=pixel.loss,
        )

    @property
    def device(self) -> torch.device:
        return self.pixel_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pixel_quant_conv.weight.dtype
