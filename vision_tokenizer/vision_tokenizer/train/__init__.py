"""DualViTok training: `python -m vision_tokenizer.train CONFIG [--a.b=value ...]` or
`torchrun --nproc_per_node N -m vision_tokenizer.train CONFIG`."""

from vision_tokenizer.train.cli import main, train
from vision_tokenizer.train.loop import Trainer

__all__ = ["Trainer", "main", "train"]
