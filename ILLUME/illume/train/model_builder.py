"""Build the MLLM and tokenizer for training from the official `model_args` (SPEC-mllm C9).

`model_args.language_model.pretrained_model_name_or_path` is either an extended Qwen2 checkpoint
(stage 1: the tower comes from `mm_vision_tower.vq_ckpt`, the projector is new) or an ILLUME
checkpoint of an earlier stage (its tower and projector weights are kept). The vision-tower and
projector dicts of `model_args` always define the architecture; the special-token ids are read
from the tokenizer, never from literals.

Trainability follows the official flags: `language_model.trainable`, `mm_vision_tower.trainable`
with `tune_vit_from_layer`, `mm_projector.trainable`, and the embedding policy of
`unfreeze_vision_embedding` / `unfreeze_text_embedding`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from vision_tokenizer.models.configuration_dualvitok import official_config_name
from vision_tokenizer.utils.checkpoint import load_into, load_state_dict_file

from illume.model import IllumeQwen2Config, IllumeQwen2ForCausalLM
from illume.model.configuration_illume import VQ_CONFIG_FILE
from illume.model.vision_tower import load_vq_model_config
from illume.vocab import ImageVocabulary

__all__ = [
    "VQ_CONFIG_FILE",
    "BuiltModel",
    "build_model_and_tokenizer",
    "apply_trainability",
    "MODULE_PREFIXES",
]

logger = logging.getLogger(__name__)

# Parameter-name fragments of the modules that get their own learning rate / trainability.
MODULE_PREFIXES = {"vision_tower": "model.vision_tower.", "mm_projector": "model.mm_projector."}
_EMBEDDING_NAMES = ("model.embed_tokens.weight", "lm_head.weight")
# Keys of the official dicts that steer this run, not the checkpoint (not saved in config.json).
_TRAINING_ONLY_KEYS = ("trainable", "from_pretrained")
# What the released config.json records for the tower's loading hints (SPEC-mllm C1).
_TOWER_DEFAULTS = {"vq_ckpt": None, "use_ema": False}


@dataclass
class BuiltModel:
    model: IllumeQwen2ForCausalLM
    tokenizer: PreTrainedTokenizerBase
    vocabulary: ImageVocabulary
    vq_model_config: dict[str, Any]


def _architecture(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in _TRAINING_ONLY_KEYS}


def _illume_config(
    base: Any, model_args: Mapping[str, Any], vocab: ImageVocabulary, vq_spec: dict, model_max_length: int
) -> IllumeQwen2Config:
    """The base checkpoint's decoder settings plus the multimodal fields training writes (SPEC-mllm C1)."""
    values = base.to_dict()
    for key in ("model_type", "architectures", "transformers_version", "auto_map"):
        values.pop(key, None)
    tower = {**_TOWER_DEFAULTS, **_architecture(model_args["mm_vision_tower"])}
    tower["unfreeze_mm_vision_tower"] = bool(model_args["mm_vision_tower"].get("trainable", False))
    projector = _architecture(model_args.get("mm_projector", {"type": "MixedProjector"}))
    values.update(
        mm_vision_tower={**tower, "vq_config": vq_spec},
        mm_projector=projector,
        mm_hidden_size=None,
        use_mm_proj=True,
        mm_patch_merge_type=model_args.get("mm_patch_merge_type", "flat"),
        special_tokens_ids=vocab.special_tokens_ids,
        tokenizer_padding_side="left",
        tokenizer_model_max_length=model_max_length,
        mm_use_im_start_end=bool(model_args.get("mm_use_im_start_end", False)),
        mm_use_im_patch_token=bool(model_args.get("mm_use_im_patch_token", False)),
        architectures=[IllumeQwen2ForCausalLM.__name__],
    )
    return IllumeQwen2Config(**values)


def _released_fields(model: IllumeQwen2ForCausalLM, vq_config_name: str) -> None:
    """Fill the config.json fields the released file spells out (names and value types, SPEC-mllm C1)."""
    config = model.config
    hidden = list(model.get_model().vision_tower.hidden_size)
    config.mm_hidden_size = hidden
    config.mm_projector = {**config.mm_projector, "hidden_size": config.hidden_size, "mm_hidden_size": hidden}
    # The architecture itself: an official name, or the JSON saved beside config.json; the tower's
    # weights are in the checkpoint, so no tokenizer checkpoint path of this machine is recorded.
    config.mm_vision_tower = {**config.mm_vision_tower, "vq_config": vq_config_name, "vq_ckpt": None}
    # Not a released key: loading a folder reads the placeholder id from its tokenizer files.
    config.__dict__.pop("image_token_id", None)


def _load_tower_checkpoint(model: IllumeQwen2ForCausalLM, path: str, use_ema: bool) -> None:
    """Copy a DualViTok checkpoint's two encoders into the tower (the rest of it is unused)."""
    state = load_state_dict_file(path, use_ema=use_ema)
    tower = model.get_model().vision_tower
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("semantic_encoder.model."):
            renamed["semantic_encoder." + key[len("semantic_encoder.model.") :]] = value
        elif key.startswith("pixel_encoder."):
            renamed[key] = value
    with _gathered(list(tower.parameters())):
        load_into(tower, renamed, strict=True, name=f"vision tower from {path}")


def _gathered(params: list[torch.nn.Parameter]) -> Any:
    """Full parameters under DeepSpeed ZeRO-3 (partitioned at construction), else a no-op."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return contextlib.nullcontext()


def build_model_and_tokenizer(
    model_args: Mapping[str, Any],
    model_max_length: int,
    resolve: Any = Path,
    dtype: torch.dtype = torch.float32,
) -> BuiltModel:
    """Load tokenizer and LLM, attach tower and projector, and fill the tower when it is new.

    `resolve` maps config paths (LLM folder, `vq_ckpt`) to absolute ones.
    """
    llm = model_args["language_model"]
    if llm.get("type", "IllumeQwen2ForCausalLM") != "IllumeQwen2ForCausalLM":
        raise ValueError(f"language_model.type must be 'IllumeQwen2ForCausalLM', got {llm.get('type')!r}")
    path = resolve(llm["pretrained_model_name_or_path"])
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"language_model.pretrained_model_name_or_path: no checkpoint folder at {path}"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left", model_max_length=model_max_length)
    if tokenizer.pad_token is None:
        raise ValueError(f"{path}: tokenizer has no pad token")
    vocab = ImageVocabulary.from_tokenizer(tokenizer)
    tower_args = model_args["mm_vision_tower"]
    source = tower_args["vq_config"]
    official = isinstance(source, str) and official_config_name(source) is not None
    vq_spec = load_vq_model_config(source if official or isinstance(source, Mapping) else resolve(source))
    config = _illume_config(AutoConfig.from_pretrained(path), model_args, vocab, vq_spec, model_max_length)
    config._attn_implementation = llm.get("attn_implementation", "sdpa")
    if llm.get("from_pretrained", True):
        model, info = IllumeQwen2ForCausalLM.from_pretrained(
            path, config=config, dtype=dtype, allow_missing_weights=True, output_loading_info=True
        )
        missing = set(info["missing_keys"])
    else:
        model = IllumeQwen2ForCausalLM(config).to(dtype)
        missing = {name for name, _ in model.named_parameters()}
    llm_missing = sorted(k for k in missing if not k.startswith(tuple(MODULE_PREFIXES.values())))
    if llm_missing and llm.get("from_pretrained", True):
        raise ValueError(f"{path}: checkpoint lacks LLM weights {llm_missing[:5]}")
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"{path}: {len(tokenizer)} tokens but only {model.config.vocab_size} embedding rows")

    tower_missing = any(k.startswith(MODULE_PREFIXES["vision_tower"]) for k in missing)
    if tower_missing and tower_args.get("vq_ckpt"):
        _load_tower_checkpoint(
            model, str(resolve(tower_args["vq_ckpt"])), bool(tower_args.get("use_ema", False))
        )
    elif tower_missing:
        logger.warning(
            "vision tower starts from random weights: %s has none and mm_vision_tower.vq_ckpt is not set",
            path,
        )
    # What config.json records: an official name, or the architecture saved beside it — never a
    # path of this machine.
    _released_fields(model, source if official else VQ_CONFIG_FILE)
    model.config.use_cache = False
    apply_trainability(model, model_args, vocab)
    return BuiltModel(model, tokenizer, vocab, vq_spec)


def _keep_new_rows_only(first_new_row: int):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:first_new_row] = 0
        return grad

    return hook


def apply_trainability(
    model: IllumeQwen2ForCausalLM, model_args: Mapping[str, Any], vocab: ImageVocabulary
) -> None:
    """Set `requires_grad` per the stage flags (SPEC-mllm C9) and log what trains."""
    llm_trainable = bool(model_args["language_model"].get("trainable", True))
    for name, param in model.named_parameters():
        if not name.startswith(tuple(MODULE_PREFIXES.values())):
            param.requires_grad = llm_trainable
    tower_args = model_args["mm_vision_tower"]
    tower = model.get_model().vision_tower
    if tower_args.get("trainable", False):
        tower.tune(tower_args.get("tune_vit_from_layer"))
    else:
        tower.freeze()
    model.get_model().mm_projector.requires_grad_(
        bool(model_args.get("mm_projector", {}).get("trainable", True))
    )

    vision_rows = bool(model_args.get("unfreeze_vision_embedding", False))
    text_rows = bool(model_args.get("unfreeze_text_embedding", False))
    embeddings = {
        id(p): p for n, p in model.named_parameters(remove_duplicate=False) if n in _EMBEDDING_NAMES
    }
    if vision_rows or text_rows:
        for param in embeddings.values():
            param.requires_grad = True
            if vision_rows and not text_rows:
                # Only the ILLUME rows (image tokens, tags, markers) learn; Qwen's text rows stay put.
                param.register_hook(_keep_new_rows_only(vocab.text_token_num))
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    logger.info("trainable parameters: %d of %d", trainable, sum(_numel(p) for p in model.parameters()))


def _numel(param: torch.nn.Parameter) -> int:
    """Full size, also of a ZeRO-3 partitioned parameter (whose local tensor is empty)."""
    return int(getattr(param, "ds_numel", param.numel()))


def save_vq_config(output_dir: str | os.PathLike, vq_spec: Mapping[str, Any]) -> None:
    """Write the DualViTok architecture beside config.json (what `VQ_CONFIG_FILE` names)."""
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / VQ_CONFIG_FILE).write_text(json.dumps(dict(vq_spec), indent=2) + "\n")
