"""The flat run options of a tokenizer training config, typed and validated in one place.

Official keys keep their meaning. Decisions where the official code is silent or wrong:
* `weight_decay`: the official optimiser is Adam *without* weight decay, whatever the key
  says. We keep that default (a warning says the key is ignored); set
  `apply_weight_decay=True` to train with AdamW and the configured `weight_decay`.
* `global_batch_size` is split over `world_size × gradient_accumulation_steps`; it must divide
  evenly (`per_proc_batch_size` is the evaluation batch size, as in the official scripts).
* `finetune=True`: a training checkpoint given as `vq_ckpt` only provides the weights (fresh
  optimizers, schedules and step); without it such a checkpoint resumes the run exactly.
  `finetune_decoder=True` trains only `pixel_post_quant_conv` and `pixel_decoder`.
* Keys that only concern unused official features are accepted and ignored: `no_local_save`,
  `aug_fade_steps` (DINO discriminator), `use_local_data`.

Extra keys (all optional): `warmup` (fraction of the run), `lr_decay_style`, `lr_decay_ratio`,
`ema_decay`, `ckpt_keep` (newest checkpoints kept, 1 = official), `sample_every` (image grid
interval, default `ckpt_every`), `max_steps` (cap on the run length), `resume`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["TrainOptions", "MIXED_PRECISION"]

MIXED_PRECISION = ("none", "bf16", "fp16")
_IGNORED = ("no_local_save", "aug_fade_steps", "use_local_data")


@dataclass
class TrainOptions:
    results_dir: str
    sample_dir: str | None = None
    epochs: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    apply_weight_decay: bool = False
    beta1: float = 0.9
    beta2: float = 0.95
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "none"
    global_seed: int = 0
    num_workers: int = 0
    log_every: int = 100
    ckpt_every: int = 2000
    ckpt_keep: int = 1
    sample_every: int | None = None
    warmup: float = 0.0
    lr_decay_style: str = "constant"
    lr_decay_ratio: float = 0.1
    ema: bool = False
    ema_decay: float = 0.9999
    vq_ckpt: str | None = None
    finetune: bool = False
    finetune_decoder: bool = False
    compile: bool = False
    training_with_anyres: bool = False
    use_group_image_resolution: bool = False
    max_steps: int | None = None
    resume: str | None = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> TrainOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: cfg[k] for k in names if k in cfg}
        if "results_dir" not in values:
            raise ValueError("config has no results_dir")
        options = cls(**values)
        options.validate()
        return options

    def validate(self) -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision={self.mixed_precision!r} (choices: {list(MIXED_PRECISION)})")
        for name in ("epochs", "gradient_accumulation_steps", "log_every", "ckpt_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vq_ckpt and self.resume and self.resume != "latest":
            # resume="latest" with vq_ckpt: start from vq_ckpt, continue from the run's own checkpoints.
            raise ValueError("set either vq_ckpt (initial weights / a run to continue) or resume, not both")

    @property
    def image_interval(self) -> int:
        return int(self.sample_every or self.ckpt_every)

    @staticmethod
    def ignored_keys() -> tuple[str, ...]:
        return _IGNORED
