"""The official `training_args` dict → `transformers.TrainingArguments` plus ILLUME's extra fields.

Keys that are `TrainingArguments` fields build it; the official extras (`model_max_length`,
`mm_projector_lr`, `mm_vision_tower_lr`, `vision_token_lr`, `group_by_modality_length`, the
LoRA switches (see `illume.train.lora`), ...) are attached as attributes; quantised (`bits` < 16)
training is refused. A few keys renamed in transformers 5
are translated; unknown keys are reported, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainingArguments

__all__ = ["EXTRA_DEFAULTS", "build_training_arguments"]

logger = logging.getLogger(__name__)

# Official extras and their defaults (configs/_base_/training/default.py).
EXTRA_DEFAULTS: dict[str, Any] = {
    "model_max_length": 512,
    "mm_projector_lr": None,
    "mm_vision_tower_lr": None,
    "vision_token_lr": None,
    "group_by_modality_length": False,
    "bits": 16,
    "lora_enable": False,
    "lora_r": 64,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_weight_path": "",
    "lora_bias": "none",
    "double_quant": True,
    "quant_type": "nf4",
    "freeze_mm_mlp_adapter": False,
    "mpt_attn_impl": "triton",
    "cache_dir": None,
    "tune_mm_mlp_adapter": False,
    # Throughput switches of this implementation (illume.train.objective / trainer).
    "cross_entropy_backend": "auto",
    "cross_entropy_chunk_size": 1024,
    "packing": False,
}

# Official keys renamed or folded in transformers 5.
_RENAMED = {
    "evaluation_strategy": "eval_strategy",
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def build_training_arguments(
    training_args: Mapping[str, Any], resolve: Callable[[str], Path]
) -> TrainingArguments:
    """TrainingArguments from the config dict; `output_dir` and `deepspeed` paths go through `resolve`."""
    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    values = dict(training_args)
    for old, new in _RENAMED.items():
        if old in values:
            values.setdefault(new, values.pop(old))
    if "warmup_ratio" in values:
        ratio = values.pop("warmup_ratio")
        if not values.get("warmup_steps"):
            values["warmup_steps"] = float(ratio)  # transformers 5: a float in [0, 1) is a ratio
    if values.pop("group_by_length", False):
        values["train_sampling_strategy"] = "group_by_length"
    extras = {key: values.pop(key, default) for key, default in EXTRA_DEFAULTS.items()}
    unknown = sorted(set(values) - fields)
    if unknown:
        logger.warning("training_args keys not used by this trainer: %s", unknown)
    if extras["lora_weight_path"]:
        raise ValueError(
            "training_args.lora_weight_path: not supported; start the run from a merged checkpoint "
            "(python -m illume.train.lora merge BASE ADAPTER OUT)"
        )
    if extras["bits"] != 16:
        raise ValueError(
            f"training_args.bits={extras['bits']}: only 16-bit (bf16/fp16/fp32) training is supported"
        )
    if not values.get("output_dir"):
        raise ValueError("training_args.output_dir is required")
    kwargs = {key: values[key] for key in values if key in fields}
    kwargs["output_dir"] = str(resolve(kwargs["output_dir"]))
    if kwargs.get("deepspeed"):
        kwargs["deepspeed"] = str(resolve(kwargs["deepspeed"]))
    # Batches carry images and dataset names that the model signature does not list.
    kwargs["remove_unused_columns"] = False
    if kwargs.get("activation_checkpointing"):
        # `every_n_layers=k` (transformers) checkpoints only every k-th decoder layer.
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False, **(kwargs.get("activation_checkpointing_kwargs") or {})}
    args = TrainingArguments(**kwargs)
    for key, value in extras.items():
        setattr(args, key, value)
    return args
