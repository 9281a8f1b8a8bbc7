"""Typed settings of decoder training, converted once from the mmengine config file.

The config file has four dicts, `model`, `data`, `train` and `sample`, whose keys are the fields
below. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .resolutions import DECODER_SIZES

__all__ = ["ModelSettings", "DataSettings", "TrainSettings", "SampleSettings", "DecoderTrainConfig"]


@dataclass
class ModelSettings:
    """Where the weights come from. Exactly one of `sdxl_path` / `decoder_path` starts a run."""

    sdxl_path: str | None = None  # SDXL release folder (unet/, vae/, scheduler/): conv_in is widened
    decoder_path: str | None = None  # a decoder folder (released layout) to fine-tune
    dualvitok_checkpoint: str | None = None  # DualViTok.from_pretrained path
    dualvitok_config: str | None = None  # its config (.py / .json) when the checkpoint has none
    dualvitok_use_ema: bool = False
    dualvitok_dtype: str = "float32"
    vae_dtype: str = "float32"  # SDXL's VAE overflows in fp16; it is frozen, so fp32 costs little


@dataclass
class DataSettings:
    root: str | None = None  # image folder (searched recursively)
    sizes_file: str | None = None  # JSON list of {"image", "width", "height"} (read_folder_image_sizes.py)
    sizes: list[tuple[int, int]] = field(default_factory=lambda: list(DECODER_SIZES))  # (W, H) buckets
    random_flip: bool = True
    num_workers: int = 4


@dataclass
class TrainSettings:
    output_dir: str | None = None
    seed: int = 0
    max_steps: int = 1000  # optimizer steps
    global_batch_size: int = 128  # images per optimizer step, all ranks and accumulation together
    micro_batch_size: int = 4  # images per rank per forward pass
    lr: float = 2e-5
    lr_schedule: str = "constant_with_warmup"  # any diffusers.optimization.get_scheduler name
    warmup_steps: int = 500
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    mixed_precision: str = "bf16"  # "bf16" (autocast on CUDA) or "no"
    gradient_checkpointing: bool = True
    ema_decay: float | None = 0.9999  # None disables EMA
    code_dropout: float = 0.1  # probability of an all-zero code map (the guidance "unconditional")
    log_every: int = 10
    checkpoint_every: int = 1000
    checkpoints_total_limit: int | None = 3
    resume: str | None = "latest"  # "latest" (in output_dir, if any), a checkpoint folder, or None


@dataclass
class SampleSettings:
    every: int = 1000  # steps between sample grids (0 = never)
    num_images: int = 4
    num_inference_steps: int = 20
    guidance_scale: float = 2.0
    seed: int = 0


def _build(cls: type, section: str, values: Mapping[str, Any] | None) -> Any:
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"config section {section!r}: unknown keys {unknown}; allowed: {sorted(names)}")
    return cls(**values)


@dataclass
class DecoderTrainConfig:
    model: ModelSettings
    data: DataSettings
    train: TrainSettings
    sample: SampleSettings

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> DecoderTrainConfig:
        """Build from a loaded config (mmengine Config or dict) and check cross-field rules."""
        sections = {"model", "data", "train", "sample"}
        extra = sorted(k for k in cfg.keys() if k not in sections and not k.startswith("_"))
        if extra:
            raise ValueError(f"unknown top-level config keys {extra}; expected {sorted(sections)}")
        config = cls(
            model=_build(ModelSettings, "model", cfg.get("model")),
            data=_build(DataSettings, "data", cfg.get("data")),
            train=_build(TrainSettings, "train", cfg.get("train")),
            sample=_build(SampleSettings, "sample", cfg.get("sample")),
        )
        config.validate()
        return config

    def validate(self) -> None:
        model, data, train = self.model, self.data, self.train
        if (model.sdxl_path is None) == (model.decoder_path is None):
            raise ValueError("set exactly one of model.sdxl_path (new decoder) or model.decoder_path (fine-tune)")
        if model.dualvitok_checkpoint is None:
            raise ValueError("model.dualvitok_checkpoint is required (the frozen tokenizer)")
        if data.root is None:
            raise ValueError("data.root is required (the training image folder)")
        if train.output_dir is None:
            raise ValueError("train.output_dir is required")
        data.sizes = [tuple(int(v) for v in s) for s in data.sizes]
        train.adam_betas = tuple(train.adam_betas)
        allowed = set(DECODER_SIZES)
        bad = [s for s in data.sizes if tuple(s) not in allowed]
        if not data.sizes or bad:
            raise ValueError(f"data.sizes must be a non-empty subset of the decoder sizes (W, H) {list(DECODER_SIZES)}; bad: {bad}")
        if train.mixed_precision not in ("bf16", "no"):
            raise ValueError(f"train.mixed_precision must be 'bf16' or 'no'; got {train.mixed_precision!r}")
        if not 0.0 <= train.code_dropout < 1.0:
            raise ValueError(f"train.code_dropout must be in [0, 1); got {train.code_dropout}")
        if train.ema_decay is not None and not 0.0 < train.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) or None; got {train.ema_decay}")

    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank; the global batch must split exactly."""
        per_pass = self.train.micro_batch_size * world_size
        if self.train.global_batch_size % per_pass:
            raise ValueError(
                f"train.global_batch_size ({self.train.global_batch_size}) must be a multiple of "
                f"micro_batch_size ({self.train.micro_batch_size}) x world size ({world_size})"
            )
        return self.train.global_batch_size // per_pass
