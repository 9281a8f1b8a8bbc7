"""Load a peft LoRA adapter (written by a `training_args.lora_enable` run) onto an ILLUME+ model.

Lives outside `train/` so inference, evaluation and the CLI can use it. The adapter folder holds
`adapter_config.json` + `adapter_model.safetensors` (LoRA matrices and the trained non-LoRA
modules: projector, tuned tower blocks, embeddings as the run's flags said). Loading merges the
adapter into the weights, so inference runs at the plain model's speed.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "is_adapter_dir", "merge_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def merge_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """`model` with the adapter's weights merged in (a plain transformers model again)."""
    folder = Path(adapter_dir)
    if not is_adapter_dir(folder) or not (folder / ADAPTER_WEIGHTS).is_file():
        raise FileNotFoundError(
            f"adapter {folder}: expected {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} (a LoRA training output folder)"
        )
    from peft import PeftModel  # the train extra; only needed when an adapter is given

    return PeftModel.from_pretrained(model, str(folder), is_trainable=False).merge_and_unload()
