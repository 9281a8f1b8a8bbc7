"""`ILLUMEQwen2Config`: a Qwen2 config plus the fields ILLUME+ training writes into `config.json`.

The released checkpoints carry the official `model_type` (`illume_qwen2`) and extra keys
(SPEC-mllm C1); every one of them is accepted here, and keys this class does not know are kept
as attributes (so a `config.json` from a newer or older training run still loads and saves back).
"""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

__all__ = ["ILLUMEQwen2Config", "VISION_TOWER_TYPES", "PROJECTOR_TYPES"]

VISION_TOWER_TYPES = ("DualVisionTower",)
PROJECTOR_TYPES = ("MixedProjector",)
_PADDING_SIDES = ("left", "right")
_NUM_SPECIAL_IMAGE_TOKENS = 7


@strict
class ILLUMEQwen2Config(Qwen2Config):
    r"""Qwen2 decoder settings plus the multimodal fields.

    mm_vision_tower: the official tower dict (`type`, `vq_config`, `min_pixels`, `max_pixels`,
        `tune_vit_from_layer`, ...); None builds a text-only model.
    mm_projector: the official projector dict (`type`, `projector_cfg1`, `projector_cfg2`).
    mm_hidden_size: [semantic feature size, pixel feature size] fed to the two projectors.
    special_tokens_ids: ids of [soi, eoi, eol, sol0, eol0, sol1, eol1] (see `illume.vocab`).
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
        super().__post_init__(**kwargs)
