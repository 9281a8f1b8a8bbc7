"""`IllumeQwen2Config`: a Qwen2 config plus the fields ILLUME+ training writes into `config.json`.

(`ILLUMEQwen2Config`, the official class name, is the same class.)

The released checkpoints carry the official `model_type` (`illume_qwen2`) and extra keys
(SPEC-mllm C1); every one of them is accepted here, and keys this class does not know are kept
as attributes (so a `config.json` from a newer or older training run still loads and saves back).

The vision tower is a typed sub-config (`VisionTowerConfig`, with its `DualViTokConfig`) read from
the checkpoint's own `mm_vision_tower` dict, which stays the serialised form so a saved
`config.json` keeps the released field names. Constructing a config never opens a file: an
official `vq_config` name resolves to the configs shipped in `vision_tokenizer`, a dict is parsed;
a file name beside `config.json` is read by `resolve_dualvitok` when a folder is loaded (JSON only —
a model folder is data, never code).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config
from vision_tokenizer.models.configuration_dualvitok import (
    DualViTokConfig,
    official_config_name,
    read_dualvitok_config,
)

__all__ = [
    "IllumeQwen2Config",
    "ILLUMEQwen2Config",
    "VisionTowerConfig",
    "VISION_TOWER_TYPES",
    "PROJECTOR_TYPES",
    "DEFAULT_MIN_PIXELS",
    "DEFAULT_MAX_PIXELS",
    "VQ_CONFIG_FILE",
    "IMAGE_PLACEHOLDER",
]

VISION_TOWER_TYPES = ("DualVisionTower",)
PROJECTOR_TYPES = ("MixedProjector",)
_PADDING_SIDES = ("left", "right")
_NUM_SPECIAL_IMAGE_TOKENS = 7
# The official tower's image-size limits when a config leaves them out (stage-3: 32² … 768²).
DEFAULT_MIN_PIXELS = 32 * 32
DEFAULT_MAX_PIXELS = 768 * 768
# The DualViTok architecture written beside config.json when `vq_config` is not an official name.
VQ_CONFIG_FILE = "dualvitok_config.json"
# Qwen2.5's own (otherwise unused) image placeholder: one per image feature in expanded input ids.
IMAGE_PLACEHOLDER = "<|image_pad|>"


@dataclass(frozen=True)
class VisionTowerConfig:
    """Typed view of `mm_vision_tower`: what shapes the tower, and the training-time loading hints."""

    type: str = "DualVisionTower"
    vq_config: str | dict | None = None
    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    tune_vit_from_layer: int | None = None
    unfreeze_mm_vision_tower: bool = False
    use_ema: bool = False
    vq_ckpt: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> VisionTowerConfig:
        values = dict(values or {})
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values and values[k] is not None}
        for key in ("min_pixels", "max_pixels"):
            if key in known:
                known[key] = int(known[key])
        return cls(**known)


def _vq_config_without_files(source: Any) -> DualViTokConfig | None:
    """The DualViTok config when it needs no file: a dict or an official name; else None."""
    if isinstance(source, Mapping):
        return read_dualvitok_config(source)
    if isinstance(source, (str, os.PathLike)) and official_config_name(source) is not None:
        return read_dualvitok_config(source)
    return None


@strict
class IllumeQwen2Config(Qwen2Config):
    r"""Qwen2 decoder settings plus the multimodal fields.

    mm_vision_tower: the official tower dict (`type`, `vq_config`, `min_pixels`, `max_pixels`,
        `tune_vit_from_layer`, ...); None builds a text-only model.
    mm_projector: the official projector dict (`type`, `projector_cfg1`, `projector_cfg2`).
    mm_hidden_size: [semantic feature size, pixel feature size] fed to the two projectors.
    special_tokens_ids: ids of [soi, eoi, eol, sol0, eol0, sol1, eol1] (see `illume.vocab`).

    `image_token_id` (an attribute, not a field, so a training run writes the released keys) is the
    id of `<|image_pad|>`, the per-feature placeholder of expanded input ids; loading a folder reads
    it from the tokenizer files when config.json lacks it.
    tokenizer_padding_side / tokenizer_model_max_length: how merged image+text sequences are
        re-padded and truncated inside the model.
    """

    model_type = "illume_qwen2"

    mm_vision_tower: dict | None = None
    mm_projector: dict | None = None
    mm_hidden_size: list[int] | None = None
    use_mm_proj: bool = True
    mm_patch_merge_type: str = "flat"
    image_aspect_ratio: str = "anyres_dualvitok"
    special_tokens_ids: list[int] | None = None
    tokenizer_padding_side: str = "left"
    tokenizer_model_max_length: int | None = None
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    mm_projector_lr: float | None = None

    def __post_init__(self, **kwargs):
        if self.tokenizer_padding_side not in _PADDING_SIDES:
            raise ValueError(
                f"tokenizer_padding_side must be one of {_PADDING_SIDES}, got {self.tokenizer_padding_side!r}"
            )
        if self.special_tokens_ids is not None and len(self.special_tokens_ids) != _NUM_SPECIAL_IMAGE_TOKENS:
            raise ValueError(
                f"special_tokens_ids must list {_NUM_SPECIAL_IMAGE_TOKENS} ids "
                f"(soi, eoi, eol, sol0, eol0, sol1, eol1), got {self.special_tokens_ids}"
            )
        for key, allowed in (("mm_vision_tower", VISION_TOWER_TYPES), ("mm_projector", PROJECTOR_TYPES)):
            value = getattr(self, key)
            if value is not None and value.get("type") not in allowed:
                raise ValueError(f"{key}.type must be one of {allowed}, got {value.get('type')!r}")
        self._dualvitok_config = (
            _vq_config_without_files(self.mm_vision_tower.get("vq_config")) if self.mm_vision_tower else None
        )
        super().__post_init__(**kwargs)

    # ------------------------------------------------------------------ the vision tower sub-config
    @property
    def vision_tower_config(self) -> VisionTowerConfig | None:
        return VisionTowerConfig.from_dict(self.mm_vision_tower) if self.mm_vision_tower is not None else None

    @property
    def dualvitok(self) -> DualViTokConfig | None:
        """The tower's DualViTok architecture, once known (see `resolve_dualvitok`)."""
        return getattr(self, "_dualvitok_config", None)

    def resolve_dualvitok(
        self, search_dirs: Sequence[str | os.PathLike] = (), explicit: Any = None
    ) -> DualViTokConfig | None:
        """Read the DualViTok architecture `vq_config` names (loading time, not construction).

        `explicit` is the caller's own config (a `DualViTokConfig`, dict, .json or .py path: a
        Python config is code and runs, which is why only the caller may name one). Otherwise a
        file name is looked up in `search_dirs` (the checkpoint folder) and read as JSON only.
        """
        if self.mm_vision_tower is None:
            return None
        if explicit is not None:
            self._dualvitok_config = read_dualvitok_config(explicit, allow_python=True)
        elif self.dualvitok is None:
            source = self.mm_vision_tower.get("vq_config")
            if source is None:
                raise ValueError("mm_vision_tower has no 'vq_config' (the DualViTok architecture config)")
            self._dualvitok_config = read_dualvitok_config(source, search_dirs=tuple(search_dirs))
        return self.dualvitok

    def to_dict(self) -> dict[str, Any]:
        """transformers' dict plus the released spellings `rope_theta` and `torch_dtype`, which the
        official code (transformers 4.44) reads — without them it would fall back to other values."""
        values = super().to_dict()
        rope = values.get("rope_parameters") or {}
        if "rope_theta" in rope:
            values.setdefault("rope_theta", rope["rope_theta"])
        if values.get("dtype") is not None:
            values.setdefault("torch_dtype", values["dtype"])
        return values

    def _remove_keys_not_serialized(self, d: dict[str, Any]) -> None:
        d.pop("_dualvitok_config", None)
        super()._remove_keys_not_serialized(d)


ILLUMEQwen2Config = IllumeQwen2Config  # the official name
