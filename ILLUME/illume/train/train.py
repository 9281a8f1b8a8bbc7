"""Train the ILLUME+ MLLM: `torchrun --nproc_per_node N ILLUME/illume/train/train.py CONFIG [--a.b=value ...]`.

Also runs as `python -m illume.train.train CONFIG`. CONFIG is an mmengine Python config with the
official `model_args`, `data_args` and `training_args`. Devices: CUDA, Ascend NPU (when
`torch_npu` is installed) or CPU (gloo for several processes). Relative paths in the config
(data meta configs, checkpoints, `output_dir`, the DeepSpeed json) are resolved against the
repository root, falling back to `ILLUME/` for the official `./scripts/zero*.json`.
If `output_dir` holds `checkpoint-*` folders, training resumes from the newest complete one exactly
(model, optimizer, scheduler, RNG and data position; see `illume.train.checkpoints`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, set_seed
from vision_tokenizer.utils.config import load_config

from illume.data.builder import build_training_dataset
from illume.data.collator import SupervisedCollator
from illume.data.conversation import get_template
from illume.data.errors import RecordErrorPolicy
from illume.model.configuration_illume import VisionTowerConfig
from illume.train.arguments import build_training_arguments
from illume.train.checkpoints import resume_checkpoint, rewind_metrics
from illume.train.lora import apply_lora
from illume.train.model_builder import build_model_and_tokenizer
from illume.train.trainer import ILLUMETrainer

__all__ = ["REPO_ROOT", "resolve_path", "main", "run"]

logger = logging.getLogger("illume.train")

REPO_ROOT = Path(__file__).resolve().parents[3]
METRICS_FILE = "metrics.jsonl"


def resolve_path(path: str | os.PathLike) -> Path:
    """Absolute paths as given; relative ones under the repository root (or `ILLUME/` if only there)."""
    candidate = Path(path).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in (REPO_ROOT, REPO_ROOT / "ILLUME"):
        if (base / candidate).exists():
            return (base / candidate).resolve()
    return (REPO_ROOT / candidate).resolve()


class DatasetEpochCallback(TrainerCallback):
    """Tell the datasets the epoch, so CFG dropout draws differ per epoch yet replay on resume."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class MetricsFileCallback(TrainerCallback):
    """Append every log record (losses, learning rate, per-dataset losses) to `output_dir/metrics.jsonl`."""

    def on_train_begin(self, args, state, control, **kwargs):
        # A resumed run starts after its checkpoint: rows the killed run logged later would repeat.
        if state.is_world_process_zero and rewind_metrics(
            Path(args.output_dir) / METRICS_FILE, state.global_step
        ):
            logger.info("%s continues from step %d", METRICS_FILE, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with open(Path(args.output_dir) / METRICS_FILE, "a", encoding="utf-8") as out:
                out.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def _enable_npu() -> None:
    """Register Ascend NPUs with torch when the plug-in is installed (transformers then uses them)."""
    if importlib.util.find_spec("torch_npu") is not None:
        import torch_npu  # noqa: F401


def run(cfg: Any) -> ILLUMETrainer:
    """Build everything from a loaded config, train (resuming if possible) and save the final model."""
    _enable_npu()
    model_args, data_args = cfg["model_args"], cfg["data_args"]
    args = build_training_arguments(cfg["training_args"], resolve_path)
    # Start the process group now: ZeRO-3 partitions parameters while the model is being built.
    logger.info("rank %d of %d on %s", args.process_index, args.world_size, args.device)
    if args.deepspeed and torch.distributed.is_initialized():
        import deepspeed  # optional dependency, only needed with a DeepSpeed config

        # Let DeepSpeed adopt the existing process group (on CPU, transformers does not do this).
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    set_seed(args.seed)
    built = build_model_and_tokenizer(model_args, args.model_max_length, resolve=resolve_path)
    model = built.model
    if args.lora_enable:
        vision_rows_only = model_args.get("unfreeze_vision_embedding") and not model_args.get("unfreeze_text_embedding")
        model = apply_lora(model, args, built.vocabulary.text_token_num if vision_rows_only else None)
    if args.ddp_find_unused_parameters is None:
        # Every trainable parameter is in each step's graph, image-less steps included
        # (IllumeQwen2Model.idle_vision_term).
        args.ddp_find_unused_parameters = False
    tower = VisionTowerConfig.from_dict(model_args["mm_vision_tower"])
    report = data_args.get("record_error_report") or Path(args.output_dir) / "malformed_records.jsonl"
    error_policy = RecordErrorPolicy(data_args.get("record_error_policy", "raise"), resolve_path(report))
    dataset = build_training_dataset(
        data_args,
        built.tokenizer,
        get_template(model_args.get("version", "qwen2")),
        min_pixels=tower.min_pixels,
        max_pixels=tower.max_pixels,
        model_max_length=args.model_max_length,
        base_dir=REPO_ROOT,
        error_policy=error_policy,
        seed=args.seed,
    )
    trainer = ILLUMETrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=SupervisedCollator(built.tokenizer.pad_token_id, dummy_image_size=None),
        processing_class=built.tokenizer,
        callbacks=[DatasetEpochCallback(dataset), MetricsFileCallback()],
        vq_model_config=built.vq_model_config,
    )
    last = resume_checkpoint(args.output_dir, set_aside=args.process_index == 0)
    trainer.train(resume_from_checkpoint=last)
    if error_policy.skipped:
        logger.warning(error_policy.summary())
    trainer.save_state()
    trainer.save_model(args.output_dir)
    return trainer


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Train the ILLUME+ MLLM from an mmengine config (model_args, data_args, training_args).",
        epilog="Any --a.b=value overrides that config key, e.g. --training_args.max_steps=10.",
    )
    parser.add_argument(
        "config", help="path of the .py config, e.g. configs/example/illume_debug/illume_debug.py"
    )
    parser.add_argument(
        "--local_rank", "--local-rank", type=int, default=None, help="set by launchers; unused"
    )
    known, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = Path(known.config) if Path(known.config).is_file() else resolve_path(known.config)
    run(load_config(config, overrides))


if __name__ == "__main__":  # torchrun ILLUME/illume/train/train.py CONFIG: a bad key is one line, exit 2
    import sys

    from vision_tokenizer.utils.user_errors import run_cli

    sys.exit(run_cli("illume/train/train.py", main))
