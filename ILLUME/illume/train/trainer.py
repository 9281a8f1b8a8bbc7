"""`ILLUMETrainer`: the transformers `Trainer` with ILLUME's optimiser groups, sampling and logging.

Differences from the plain Trainer, each for a reason:

* parameter groups per module — LLM (`learning_rate`), projector (`mm_projector_lr`), vision tower
  (`mm_vision_tower_lr`), embeddings / LM head (`vision_token_lr`) — each split into decay and
  no-decay; every rate that is set applies on its own (the official code ignored the tower rate
  unless the projector rate was also set);
* the loss is the mean over each micro-batch's supervised tokens, as in the official training,
  computed without full-vocabulary logits (:mod:`illume.train.objective`: chunked or liger
  head + cross-entropy, optionally packed rows); it is also logged per dataset (`loss/<dataset>`,
  reduced over all ranks): the mean of the token-mean losses of that dataset's samples (with
  liger, which returns only the batch loss, each sample counts with its micro-batch's loss);
* `group_by_modality_length` uses :class:`ModalityLengthGroupedSampler`; under ZeRO-3 with more
  than one sample per device :class:`SizeBucketedSampler` instead, so each micro-batch's input
  images share one size (one sample per device keeps the plain order);
* trainable half-precision weights without DeepSpeed are refused (no fp32 master copy); under
  ZeRO-3 each step checks that all ranks run the pixel encoder equally often (images of
  different sizes in one batch run it once per image), raising instead of hanging in mismatched
  gathers — after the bucketing only a sample whose own input images differ in size can fail;
* every checkpoint folder also holds the DualViTok architecture (`VQ_CONFIG_FILE`), so it loads
  through `AutoModelForCausalLM.from_pretrained` anywhere.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers import Trainer
from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

from illume.data.sampler import ModalityLengthGroupedSampler, SizeBucketedSampler
from illume.train.arguments import EXTRA_DEFAULTS
from illume.train.checkpoints import staged_save
from illume.train.model_builder import MODULE_PREFIXES, save_vq_config
from illume.train.objective import ObjectiveConfig, empty_index, training_objective

__all__ = ["ILLUMETrainer", "check_master_weights", "check_same_encoder_calls", "parameter_groups", "pixel_encoder_calls"]

logger = logging.getLogger(__name__)

# TrainingArguments built without build_training_arguments lack these: the same defaults apply.
_OBJECTIVE_KEYS = ("cross_entropy_backend", "cross_entropy_chunk_size", "packing")

_EMBEDDING_PARAMS = ("model.embed_tokens.", "lm_head.")


def _module_of(name: str) -> str:
    for module, prefix in MODULE_PREFIXES.items():
        if name.startswith(prefix):
            return module
    if name.startswith(_EMBEDDING_PARAMS):
        return "embeddings"
    return "llm"


def parameter_groups(
    model: nn.Module, decay_names: Sequence[str], weight_decay: float, rates: Mapping[str, float]
) -> list[dict[str, Any]]:
    """Optimizer groups: one (decay, no-decay) pair per module kind in `rates` that has trainable params.

    `rates` maps 'llm', 'mm_projector', 'vision_tower', 'embeddings' to learning rates. Tied weights
    (embeddings = LM head) appear once.
    """
    decay = set(decay_names)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = defaultdict(list)
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets[(_module_of(name), name in decay)].append(param)
    groups = []
    for (module, decays), params in sorted(buckets.items()):
        groups.append(
            {
                "params": params,
                "lr": rates[module],
                "weight_decay": weight_decay if decays else 0.0,
                "name": f"{module}/{'decay' if decays else 'no_decay'}",
            }
        )
    return groups


def check_master_weights(model: nn.Module, deepspeed: bool) -> None:
    """Trainable half-precision weights need DeepSpeed, which keeps their fp32 master copies.

    Without it the optimizer would update the bf16 tensors themselves and lose small steps;
    `bf16=True` alone trains fp32 weights under autocast, which is fine.
    """
    half = [n for n, p in model.named_parameters() if p.requires_grad and p.dtype in (torch.bfloat16, torch.float16)]
    if half and not deepspeed:
        raise ValueError(
            f"{len(half)} trainable parameters are {dict(model.named_parameters())[half[0]].dtype} "
            f"(e.g. {half[0]}) without DeepSpeed: load the model in float32 (bf16=True then uses autocast) "
            "or train with a DeepSpeed config (fp32 master weights)"
        )


def pixel_encoder_calls(images: Sequence[torch.Tensor]) -> int:
    """How many times the vision tower runs its pixel encoder for these images (or its placeholder):
    once when they share one size, once per image otherwise (`DualVisionTower._pixel_features`)."""
    if len(images) <= 1 or all(image.shape == images[0].shape for image in images):
        return 1
    return len(images)


def check_same_encoder_calls(images: Sequence[torch.Tensor], device: torch.device) -> None:
    """Under ZeRO-3 every rank must gather the pixel encoder's parameters equally often per step."""
    mine = torch.tensor([pixel_encoder_calls(images)], device=device)
    every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    calls = [int(c) for c in every]
    if len(set(calls)) > 1:
        raise RuntimeError(
            f"ZeRO-3: ranks would run the pixel encoder {calls} times this step (input images of "
            "different sizes in one batch also take the ViT's per-image path), so their parameter "
            "gathers would differ. The size-bucketed sampler cannot prevent this when one sample's "
            "own input images differ in size: resize them to one size, use ZeRO-2 for such data, "
            "or give each sample one input image"
        )


class ILLUMETrainer(Trainer):
    def __init__(self, *args: Any, vq_model_config: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vq_model_config = dict(vq_model_config) if vq_model_config is not None else None
        # Per-micro-batch token-mean loss (the official objective), divided by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self._dataset_loss: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        extra = {key: getattr(self.args, key, EXTRA_DEFAULTS[key]) for key in _OBJECTIVE_KEYS}
        self.objective = ObjectiveConfig(
            backend=extra["cross_entropy_backend"],
            chunk_size=int(extra["cross_entropy_chunk_size"]),
            packing=bool(extra["packing"]),
        )
        check_master_weights(self.model, bool(self.args.deepspeed))
        # ZeRO-3 gathers parameters collectively in forward hooks: ranks must run the same modules.
        self._zero3 = is_deepspeed_zero3_enabled()

    # ------------------------------------------------------------------ optimisation
    def learning_rates(self) -> dict[str, float]:
        base = self.args.learning_rate

        def rate(key: str) -> float:
            value = getattr(self.args, key, None)
            return base if value is None else float(value)

        return {
            "llm": base,
            "mm_projector": rate("mm_projector_lr"),
            "vision_tower": rate("mm_vision_tower_lr"),
            "embeddings": rate("vision_token_lr"),
        }

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = parameter_groups(
                opt_model,
                self.get_decay_parameter_names(opt_model),
                self.args.weight_decay,
                self.learning_rates(),
            )
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            optimizer_kwargs.pop("lr", None)
            self.optimizer = optimizer_cls(groups, lr=self.args.learning_rate, **optimizer_kwargs)
            for group in groups:
                logger.info(
                    "optimizer group %s: %d tensors, lr %g", group["name"], len(group["params"]), group["lr"]
                )
        return self.optimizer

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self._zero3 and self.args.train_batch_size > 1 and hasattr(dataset, "input_image_sizes"):
            return SizeBucketedSampler(
                dataset.input_image_sizes(),
                batch_size=self.args.train_batch_size,
                world_size=self.args.world_size,
                seed=self.args.seed,
            )
        if getattr(self.args, "group_by_modality_length", False):
            return ModalityLengthGroupedSampler(
                dataset.modality_lengths(),
                batch_size=self.args.train_batch_size,
                world_size=self.args.world_size,
                seed=self.args.seed,
            )
        return super()._get_train_sampler(train_dataset)

    # ------------------------------------------------------------------ loss and logging
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        names = inputs.pop("dataset_names", None)
        if self._zero3 and model.training:
            check_same_encoder_calls(inputs.get("images") or [], self.args.device)
        if "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs)
        device = inputs["labels"].device
        with training_objective(self.accelerator.unwrap_model(model), self.objective) as step:
            loss, outputs = super().compute_loss(
                model, {**inputs, "logits_to_keep": empty_index(device)}, return_outputs=True
            )
        if names and model.training:
            if step.sample_loss is not None:
                values = step.sample_loss.tolist()
            else:
                values = [float(loss.detach())] * len(names)
            for name, value in zip(names, values):
                self._dataset_loss[name][0] += value
                self._dataset_loss[name][1] += 1
        return (loss, outputs) if return_outputs else loss

    def _dataset_names(self) -> list[str]:
        datasets = getattr(self.train_dataset, "datasets", [])
        return sorted({ds.name for ds in datasets})

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        names = self._dataset_names()
        if names and "loss" in logs:
            totals = torch.tensor([self._dataset_loss[n] for n in names], dtype=torch.float64)
            if dist.is_available() and dist.is_initialized():
                totals = totals.to(self.args.device)
                dist.all_reduce(totals)
                totals = totals.cpu()
            for name, (total, count) in zip(names, totals.tolist()):
                if count:
                    logs[f"loss/{name}"] = total / count
            self._dataset_loss.clear()
        super().log(logs, start_time)

    # ------------------------------------------------------------------ saving
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # Staged and published atomically, so a kill mid-write never blocks resuming.
        with staged_save(self):
            super()._save_checkpoint(model, trial)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save and self.vq_model_config is not None:
            save_vq_config(
                output_dir if output_dir is not None else self.args.output_dir, self.vq_model_config
            )
