"""DualViTok: the ILLUME+ image tokenizer (semantic ViT branch + MoVQ pixel branch, two SimVQ codebooks).

An image gives two code grids: semantic codes (one per 28 x 28 pixels of the ViT input, "level 0")
and pixel codes (one per 16 x 16 pixels, "level 1"). The decoder upsamples the semantic codes to
the pixel grid, concatenates [semantic, pixel] channels and reconstructs the image from both.

Module and state-dict names follow the official checkpoint (see `manifests/`), so the released
weights load strictly. Images are [-1, 1] tensors: a [B, 3, H, W] batch, or a list of [1, 3, H, W]
(or [3, H, W]) images of different sizes; lists give lists back, one entry per image.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..utils.checkpoint import load_into, load_state_dict_file
from ..utils.config import load_config
from .movq import MoVQConfig, MoVQDecoder, MoVQEncoder
from .quantizer import SimVQ
from .semantic import SemanticDecoder, SemanticEncoder, rows_to_maps
from .vit import Qwen2VLVisionRotaryEmbedding, vit_config
from .vit_input import prepare_vit_input

__all__ = ["DualViTok", "CONFIG_FILE_NAME", "WEIGHTS_FILE_NAME"]

CONFIG_FILE_NAME = "config.json"
WEIGHTS_FILE_NAME = "model.safetensors"
MODEL_TYPE = "DualViTok"
# Explicit ViT hyper-parameters next to `config` (golden JSON files), overriding the encoder's name.
VIT_CONFIG_KEY = "_semantic_encoder_vit_config"
_COMMENT_KEYS = frozenset({"_note"})

_SEMANTIC_ENCODER_KEYS = frozenset(
    {
        "semantic_encoder",
        "num_blocks",
        "proj_layer",
        "z_channels",
        "embed_dim",
        "attn_implementation",
        "target_mlp",
    }
)
_SEMANTIC_DECODER_KEYS = frozenset(
    {"z_channels", "embed_dim", "output_channels", "num_blocks", "proj_layer", "attn_implementation"}
)
_QUANTIZER_KEYS = frozenset(
    {
        "type",
        "dim",
        "codebook_size",
        "channel_first",
        "rotation_trick",
        "commitment_weight",
        "input_to_quantize_commit_loss_weight",
    }
)
_MODEL_KEYS = frozenset(
    {
        "semantic_encoder",
        "semantic_quantizer",
        "semantic_decoder",
        "pixel_encoder",
        "pixel_quantizer",
        "pixel_decoder",
        "pixel_drop_rate",
        "pixel_drop_batch_rate",
        "pixel_noise_type",
        "semantic_detail_merge_type",
        "infer_interpolate",
    }
)
NOISE_TYPES = ("random", "zero")
MERGE_TYPES = ("cat",)

Images = torch.Tensor | Sequence[torch.Tensor]


def _checked(section: str, values: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise TypeError(f"DualViTok config {section!r} must be a dict, got {type(values).__name__}")
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(
            f"unknown keys {unknown} in DualViTok config {section!r}; allowed: {sorted(allowed)}"
        )
    return dict(values)


def _build_quantizer(section: str, values: Mapping[str, Any]) -> SimVQ:
    options = _checked(section, values, _QUANTIZER_KEYS)
    kind = options.pop("type", "SimVQ")
    if kind != "SimVQ":
        raise ValueError(
            f"DualViTok config {section!r}: quantizer type {kind!r} is not supported (choices: ['SimVQ'])"
        )
    missing = sorted({"dim", "codebook_size"} - set(options))
    if missing:
        raise ValueError(f"DualViTok config {section!r} lacks {missing}")
    return SimVQ(**options)


def _plain(value: Any) -> Any:
    """mmengine ConfigDicts / tuples -> plain JSON-compatible dicts and lists (a copy)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def _is_image_list(images: Images) -> bool:
    if isinstance(images, torch.Tensor):
        return False
    if isinstance(images, Sequence):
        return True
    raise TypeError(f"images must be a [B, 3, H, W] tensor or a list of tensors, got {type(images).__name__}")


def _group_by_size(images: Sequence[torch.Tensor]) -> list[tuple[list[int], torch.Tensor]]:
    """Stack same-size images of a list into batches: [(positions in the list, [n, 3, H, W])]."""
    groups: dict[tuple[int, int], list[int]] = {}
    batch_images = []
    for i, image in enumerate(images):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image {i} is a {type(image).__name__}, expected a torch.Tensor")
        image = image.unsqueeze(0) if image.ndim == 3 else image
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image {i}: expected shape [1, 3, H, W] or [3, H, W], got {tuple(image.shape)}")
        batch_images.append(image)
        groups.setdefault(tuple(image.shape[-2:]), []).append(i)
    if not batch_images:
        raise ValueError("no images given")
    return [(positions, torch.cat([batch_images[i] for i in positions])) for positions in groups.values()]


def _scatter(count: int, groups: list[tuple[list[int], Any]]) -> list[Any]:
    """Per-group batched results -> one [1, ...] entry per original image position."""
    result: list[Any] = [None] * count
    for positions, batch in groups:
        for position, item in zip(positions, batch.split(1)):
            result[position] = item
    return result


class DualViTok(nn.Module):
    """The dual tokenizer. Build it with `from_config` / `from_pretrained`; keys match the official model."""

    def __init__(
        self,
        semantic_encoder: Mapping[str, Any],
        semantic_quantizer: Mapping[str, Any],
        semantic_decoder: Mapping[str, Any],
        pixel_encoder: Mapping[str, Any],
        pixel_quantizer: Mapping[str, Any],
        pixel_decoder: Mapping[str, Any],
        pixel_drop_rate: float | None = None,
        pixel_drop_batch_rate: float = 0.1,
        pixel_noise_type: str = "random",
        semantic_detail_merge_type: str = "cat",
        infer_interpolate: Any = None,
        semantic_vit_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pixel_noise_type not in NOISE_TYPES:
            raise ValueError(f"pixel_noise_type must be one of {NOISE_TYPES}, got {pixel_noise_type!r}")
        if semantic_detail_merge_type not in MERGE_TYPES:
            raise ValueError(
                f"semantic_detail_merge_type must be one of {MERGE_TYPES}, got {semantic_detail_merge_type!r}"
            )
        self.config = {
            "type": MODEL_TYPE,
            "config": _plain(
                {
                    "semantic_encoder": semantic_encoder,
                    "semantic_quantizer": semantic_quantizer,
                    "semantic_decoder": semantic_decoder,
                    "pixel_encoder": pixel_encoder,
                    "pixel_quantizer": pixel_quantizer,
                    "pixel_decoder": pixel_decoder,
                    "pixel_drop_rate": pixel_drop_rate,
                    "pixel_drop_batch_rate": pixel_drop_batch_rate,
                    "pixel_noise_type": pixel_noise_type,
                    "semantic_detail_merge_type": semantic_detail_merge_type,
                    "infer_interpolate": infer_interpolate,
                }
            ),
        }
        if semantic_vit_config is not None:
            self.config[VIT_CONFIG_KEY] = _plain(semantic_vit_config)

        encoder_options = _checked("semantic_encoder", semantic_encoder, _SEMANTIC_ENCODER_KEYS)
        vit_spec = encoder_options.pop("semantic_encoder", "Emova-ollm/qwen2vit600m")
        attn_implementation = encoder_options.get("attn_implementation", "sdpa")
        vit = vit_config(
            semantic_vit_config if semantic_vit_config is not None else vit_spec, attn_implementation
        )
        self.semantic_encoder = SemanticEncoder(vit, **encoder_options)
        self.semantic_quantizer = _build_quantizer("semantic_quantizer", semantic_quantizer)
        self.semantic_decoder = SemanticDecoder(
            **_checked("semantic_decoder", semantic_decoder, _SEMANTIC_DECODER_KEYS)
        )

        encoder_config = MoVQConfig.from_dict(pixel_encoder)
        decoder_config = MoVQConfig.from_dict(pixel_decoder)
        self.pixel_encoder = MoVQEncoder(encoder_config)
        quantizer = _build_quantizer("pixel_quantizer", pixel_quantizer)
        self.pixel_quant_conv = nn.Conv2d(encoder_config.z_channels, quantizer.dim, kernel_size=1)
        self.pixel_quantizer = quantizer
        merged = self.semantic_quantizer.dim + quantizer.dim
        if decoder_config.embed_dim != merged:
            raise ValueError(
                f"pixel_decoder.embed_dim ({decoder_config.embed_dim}) must equal semantic + pixel code dims ({merged})"
            )
        self.pixel_post_quant_conv = nn.Conv2d(merged, decoder_config.z_channels, kernel_size=1)
        self.pixel_decoder = MoVQDecoder(decoder_config)

        self.pixel_drop_rate = pixel_drop_rate
        self.pixel_drop_batch_rate = pixel_drop_batch_rate
        self.pixel_noise_type = pixel_noise_type

    # ------------------------------------------------------------------ construction and I/O

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | str | os.PathLike) -> DualViTok:
        """Build from the `vq_model` dict ({type, config}), a whole loaded config, a .py or a .json file."""
        if isinstance(cfg, (str, os.PathLike)):
            path = Path(cfg)
            try:
                return cls.from_config(cls._read_config_file(path))
            except (TypeError, ValueError) as error:
                raise type(error)(f"{path}: {error}") from error
        if hasattr(cfg, "to_dict") and not isinstance(cfg, Mapping):  # a loaded mmengine Config
            cfg = cfg.to_dict()
        if not isinstance(cfg, Mapping):
            raise TypeError(f"DualViTok config must be a dict or a file path, got {type(cfg).__name__}")
        cfg = _plain(cfg)
        if "vq_model" in cfg and "type" not in cfg:
            cfg = cfg["vq_model"]
        unknown = sorted(set(cfg) - {"type", "config", VIT_CONFIG_KEY} - _COMMENT_KEYS)
        if unknown or "config" not in cfg:
            raise ValueError(
                f"expected a vq_model dict {{'type': 'DualViTok', 'config': {{...}}}}; "
                f"got keys {sorted(cfg)}" + (f" (unknown: {unknown})" if unknown else "")
            )
        if cfg.get("type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"vq_model type {cfg['type']!r} is not supported (choices: [{MODEL_TYPE!r}])")
        options = _checked("config", cfg["config"], _MODEL_KEYS)
        return cls(**options, semantic_vit_config=cfg.get(VIT_CONFIG_KEY))

    @staticmethod
    def _read_config_file(path: Path) -> Mapping[str, Any]:
        if not path.is_file():
            raise FileNotFoundError(f"DualViTok config not found: {path}")
        if path.suffix == ".json":
            try:
                return json.loads(path.read_text())
            except ValueError as error:
                raise ValueError(f"invalid JSON in DualViTok config {path}: {error}") from error
        if path.suffix == ".py":
            loaded = load_config(path)
            if "vq_model" not in loaded:
                raise ValueError(f"config file {path} has no 'vq_model' entry")
            return loaded["vq_model"]
        raise ValueError(f"DualViTok config must be a .py or .json file, got {path}")

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        use_ema: bool = False,
        strict: bool = True,
        config: Mapping[str, Any] | str | os.PathLike | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> DualViTok:
        """Load weights from a file or folder in any official layout.

        Without `config`, a folder's `config.json` (written by `save_pretrained`) describes the model.
        With `strict`, the model is built without initialising weights and takes the checkpoint's
        tensors directly; any missing, unexpected or mis-shaped key is an error naming the keys.
        """
        path = Path(path)
        if config is None:
            config_file = path / CONFIG_FILE_NAME if path.is_dir() else path.parent / CONFIG_FILE_NAME
            if not config_file.is_file():
                raise ValueError(
                    f"no {CONFIG_FILE_NAME} beside {path}; pass config= (a vq_model dict, .py or .json config)"
                )
            config = config_file
        state_dict = load_state_dict_file(path, use_ema=use_ema)
        if strict:
            with torch.device("meta"):
                model = cls.from_config(config)
            load_into(model, state_dict, strict=True, name=f"DualViTok ({path})", assign=True)
            model._reset_rotary_buffers()
        else:
            model = cls.from_config(config)
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
        """Write `config.json` (the vq_model dict) and `model.safetensors` (the state dict)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE_NAME).write_text(json.dumps(self.config, indent=2) + "\n")
        state = {key: tensor.detach().contiguous().cpu() for key, tensor in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE_NAME), metadata={"format": "pt"})

    # ------------------------------------------------------------------ encoding

    def _encode_batch(self, images: torch.Tensor) -> tuple[tuple, tuple]:
        patches, grid_thw = prepare_vit_input(images)
        z_rows, target_rows = self.semantic_encoder(patches, grid_thw)
        grid_hw = self.semantic_encoder.merged_grid(grid_thw)
        z_semantic = rows_to_maps(z_rows, grid_hw)
        target = rows_to_maps(target_rows, grid_hw)
        q_semantic, loss_semantic, idx_semantic = self.semantic_quantizer(z_semantic.float())

        h_pixel = self.pixel_quant_conv(self.pixel_encoder(images.to(self.pixel_quant_conv.weight.dtype)))
        q_pixel, loss_pixel, idx_pixel = self.pixel_quantizer(h_pixel.float())
        return (q_semantic, loss_semantic, idx_semantic, target), (q_pixel, loss_pixel, idx_pixel)

    def encode(self, images: Images) -> tuple[tuple, tuple]:
        """((q_sem, loss_sem, idx_sem, target_sem), (q_pix, loss_pix, idx_pix)).

        Shapes for a batch: q_sem [B, d, hs, ws], idx_sem [B, hs, ws], target_sem [B, hidden, hs, ws],
        q_pix [B, d, H/16, W/16], idx_pix [B, H/16, W/16]; the losses are scalars (commitment
        losses averaged over all positions). For a list, every map is a list of [1, ...] tensors.
        """
        if not _is_image_list(images):
            return self._encode_batch(images)
        groups = _group_by_size(images)
        outputs = [(positions, self._encode_batch(batch)) for positions, batch in groups]
        count = len(images)

        def gather(branch: int, item: int) -> list[torch.Tensor]:
            return _scatter(count, [(positions, out[branch][item]) for positions, out in outputs])

        def mean_loss(branch: int) -> torch.Tensor:
            weights = [out[branch][2].numel() for _, out in outputs]
            total = sum(out[branch][1] * w for (_, out), w in zip(outputs, weights))
            return total / sum(weights)

        semantic = (gather(0, 0), mean_loss(0), gather(0, 2), gather(0, 3))
        pixel = (gather(1, 0), mean_loss(1), gather(1, 2))
        return semantic, pixel

    def encode_code(self, images: Images) -> tuple[Any, Any]:
        """Code grids (idx_sem [B, hs, ws], idx_pix [B, H/16, W/16]), or lists of [1, h, w] for a list."""
        (_, _, idx_semantic, _), (_, _, idx_pixel) = self.encode(images)
        return idx_semantic, idx_pixel

    def indices_to_codes(self, idx_semantic: Images, idx_pixel: Images) -> tuple[Any, Any]:
        """Code vectors (q_sem [B, d, hs, ws], q_pix [B, d, hp, wp]) for index grids (or lists of grids)."""
        if isinstance(idx_semantic, torch.Tensor) and isinstance(idx_pixel, torch.Tensor):
            return self.semantic_quantizer.indices_to_codes(
                idx_semantic
            ), self.pixel_quantizer.indices_to_codes(idx_pixel)
        pairs = [self.indices_to_codes(s, p) for s, p in self._pairs(idx_semantic, idx_pixel)]
        return [s for s, _ in pairs], [p for _, p in pairs]

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

    @staticmethod
    def _pairs(semantic: Images, pixel: Images) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if (
            isinstance(semantic, torch.Tensor)
            or isinstance(pixel, torch.Tensor)
            or len(semantic) != len(pixel)
        ):
            raise ValueError(
                "semantic and pixel inputs must both be tensors or both be lists of the same length"
            )
        return list(zip(semantic, pixel))

    def decode(self, q_semantic: Images, q_pixel: Images) -> torch.Tensor | list[torch.Tensor]:
        """Images [B, 3, 16*hp, 16*wp] in about [-1, 1] from both code maps (lists give lists)."""
        if isinstance(q_semantic, torch.Tensor) and isinstance(q_pixel, torch.Tensor):
            return self._decode_batch(q_semantic, q_pixel)
        return [self._decode_batch(s, p) for s, p in self._pairs(q_semantic, q_pixel)]

    def decode_code(self, idx_semantic: Images, idx_pixel: Images) -> torch.Tensor | list[torch.Tensor]:
        """Images from code indices: `decode(*indices_to_codes(...))`."""
        return self.decode(*self.indices_to_codes(idx_semantic, idx_pixel))

    def decode_semantic(self, q_semantic: Images) -> torch.Tensor | list[torch.Tensor]:
        """Reconstructed (normalised) ViT features [B, hidden, hs, ws] from semantic codes."""
        return self.semantic_decoder(q_semantic)

    def forward(self, images: Images) -> tuple[tuple, tuple]:
        """((dec_sem, loss_sem, target_sem), (reconstruction, loss_pix)) — the training pass."""
        (q_semantic, loss_semantic, _, target), (q_pixel, loss_pixel, _) = self.encode(images)
        decoded_semantic = self.decode_semantic(q_semantic)
        reconstruction = self.decode(q_semantic, q_pixel)
        return (decoded_semantic, loss_semantic, target), (reconstruction, loss_pixel)

    @property
    def device(self) -> torch.device:
        return self.pixel_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pixel_quant_conv.weight.dtype
