"""LoRA fine-tuning through peft, driven by the official switches, and the merge command.

`training_args.lora_enable=True` puts LoRA (`lora_r`, `lora_alpha`, `lora_dropout`, `lora_bias`)
on every Qwen2 decoder projection (q/k/v/o, gate/up/down). Whatever else the stage flags left
trainable (projector, tuned vision-tower blocks, embedding rows) trains in full as peft
`modules_to_save`, so the saved adapter folder alone restores the run: the smallest modules
that cover those parameters are chosen; the embeddings and the tied LM head stay tied
(`ensure_weight_tying`), and with `unfreeze_vision_embedding` alone only the ILLUME rows learn.

The base of an adapter is the model the run started from (`language_model.pretrained_model_name_or_path`,
an ILLUME+ checkpoint). Merge it into a plain checkpoint with
`python -m illume.train.lora merge BASE ADAPTER OUT`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from illume.adapter import merge_adapter
from illume.train.model_builder import MODULE_PREFIXES, VQ_CONFIG_FILE, _keep_new_rows_only

__all__ = ["LORA_TARGETS", "apply_lora", "lora_modules_to_save", "merge_to_checkpoint", "main"]

# Qwen2 decoder projections (the vision tower's ViT has its own, which LoRA leaves alone).
LORA_TARGETS = r".*\blayers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_EMBEDDINGS = ("embed_tokens", "lm_head")
_LORA_BIAS = ("none", "all", "lora_only")


def lora_modules_to_save(model: nn.Module) -> list[str]:
    """The fewest vision-tower / projector modules whose parameters are all trainable and that cover
    every trainable parameter there (the LLM itself trains through LoRA; embeddings go by name)."""
    prefixes = tuple(MODULE_PREFIXES.values())
    chosen: list[str] = []
    for name, module in model.named_modules():
        if not (name + ".").startswith(prefixes) or any(name.startswith(c + ".") for c in chosen):
            continue
        params = list(module.parameters())
        if params and all(p.requires_grad for p in params):
            chosen.append(name)
    covered = {id(p) for c in chosen for p in model.get_submodule(c).parameters()}
    stray = [n for n, p in model.named_parameters() if n.startswith(prefixes) and p.requires_grad and id(p) not in covered]
    if stray:
        raise ValueError(f"LoRA: trainable parameters inside partly frozen modules cannot be saved: {stray[:4]}")
    return chosen


def apply_lora(model: nn.Module, args: Any, first_trainable_row: int | None = None) -> nn.Module:
    """Wrap `model` (trainability already set by the stage flags) in a peft LoRA model.

    `first_trainable_row`: with `unfreeze_vision_embedding` only, the first ILLUME row; rows before
    it get no gradient. None when every embedding row trains (or none does).
    """
    from peft import LoraConfig, get_peft_model  # the train extra

    if args.lora_bias not in _LORA_BIAS:
        raise ValueError(f"training_args.lora_bias={args.lora_bias!r}: expected one of {', '.join(_LORA_BIAS)}")
    embeddings_train = model.get_input_embeddings().weight.requires_grad
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    modules = lora_modules_to_save(model) + (list(_EMBEDDINGS) if embeddings_train else [])
    config = LoraConfig(
        r=int(args.lora_r), lora_alpha=int(args.lora_alpha), lora_dropout=float(args.lora_dropout),
        bias=args.lora_bias, target_modules=LORA_TARGETS, modules_to_save=modules or None,
        ensure_weight_tying=embeddings_train and tied, task_type="CAUSAL_LM",
    )  # fmt: skip
    peft_model = get_peft_model(model, config)
    if embeddings_train and first_trainable_row is not None:
        peft_model.get_input_embeddings().weight.register_hook(_keep_new_rows_only(first_trainable_row))
    return peft_model


def merge_to_checkpoint(base: str | Path, adapter: str | Path, out: str | Path) -> Path:
    """Load BASE (an ILLUME+ folder), merge ADAPTER into it and save a plain checkpoint at OUT."""
    import shutil

    from transformers import AutoTokenizer

    from illume.model import IllumeQwen2ForCausalLM

    model = merge_adapter(IllumeQwen2ForCausalLM.from_pretrained(base), adapter)
    out = Path(out)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    vq_config = Path(base) / VQ_CONFIG_FILE
    if vq_config.is_file():
        shutil.copy2(vq_config, out / VQ_CONFIG_FILE)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LoRA adapters of ILLUME+ training runs.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge an adapter into its base model and save a plain checkpoint")
    merge.add_argument("base", help="the ILLUME+ checkpoint the LoRA run started from")
    merge.add_argument("adapter", help="the run's output folder (adapter_config.json, adapter_model.safetensors)")
    merge.add_argument("out", help="folder to write the merged checkpoint to")
    args = parser.parse_args(argv)
    if not (Path(args.base) / "config.json").is_file():
        parser.error(f"base {args.base}: not an ILLUME+ checkpoint folder (no config.json)")
    try:
        print(merge_to_checkpoint(args.base, args.adapter, args.out))
    except FileNotFoundError as err:  # a wrong adapter folder: one line, exit 2
        parser.error(str(err))


if __name__ == "__main__":
    main()
