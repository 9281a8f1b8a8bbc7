"""The training objective of a causal-LM forward: chunked head + cross-entropy, optional packing.

The model's own forward is kept (so DDP / DeepSpeed / peft wrappers, image merging and the idle
vision term all run as usual); the objective only changes what happens around the decoder,
through transformers' public extension points, for the duration of one call:

* `logits_to_keep=<empty index>` makes the model apply its LM head to no position;
* a forward hook on the decoder keeps its last hidden state (and, with packing, a pre-hook
  packs the decoder inputs, see :mod:`illume.train.packing`);
* `model.loss_function` (settable in transformers) receives the merged labels and computes
  :func:`illume.train.loss.linear_cross_entropy` from the kept hidden state and the head weight.
  Under ZeRO-3 it runs inside the model's forward, where DeepSpeed gathers the head weight.

The loss is the mean over the micro-batch's supervised tokens (the official objective; 0, not
NaN, when none is supervised); per-sample means are kept for per-dataset logging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from illume.train.loss import DEFAULT_CHUNK, TokenLosses, linear_cross_entropy
from illume.train.packing import Layout
from illume.vocab import IGNORE_INDEX

__all__ = ["ObjectiveConfig", "StepLosses", "causal_lm_of", "empty_index", "training_objective"]


@dataclass(frozen=True)
class ObjectiveConfig:
    """`backend`: 'auto' (liger on CUDA when installed, else chunked), 'chunked', 'liger' or 'plain'."""

    backend: str = "auto"
    chunk_size: int = DEFAULT_CHUNK
    packing: bool = False


@dataclass
class StepLosses:
    """What one forward computed: the loss, and each sample's token-mean loss (None with liger)."""

    loss: torch.Tensor | None = None
    tokens: TokenLosses | None = None
    sample_loss: torch.Tensor | None = None


def causal_lm_of(model: nn.Module) -> nn.Module:
    """The transformers causal LM inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class _Hooks:
    def __init__(self, lm: nn.Module, config: ObjectiveConfig, result: StepLosses) -> None:
        self.lm, self.config, self.result = lm, config, result
        self.hidden: torch.Tensor | None = None
        self.layout: Layout | None = None

    def before_decoder(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = module.get_input_embeddings()(kwargs["input_ids"])
        self.layout = Layout.of(kwargs.get("attention_mask"), embeds.shape, embeds.device, self.config.packing)
        if self.config.packing:
            embeds, positions = self.layout.pack(embeds, kwargs.get("position_ids"))
            # No cache: transformers reads restarting position ids as sample boundaries only without one.
            kwargs = {**kwargs, "input_ids": None, "inputs_embeds": embeds, "position_ids": positions,
                      "attention_mask": None, "use_cache": False, "cache": None}  # fmt: skip
        return args, kwargs

    def after_decoder(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        self.hidden = output.last_hidden_state

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, vocab_size: int, **kwargs: Any) -> torch.Tensor:
        if self.hidden is None or self.layout is None:
            raise RuntimeError("the training objective saw no decoder output before the loss")
        targets, samples = self.layout.flat_targets(labels.to(self.hidden.device))
        head = self.lm.get_output_embeddings()
        tokens = linear_cross_entropy(
            self.hidden.reshape(-1, self.hidden.shape[-1]), head.weight, targets, head.bias,
            backend=self.config.backend, chunk_size=self.config.chunk_size,
        )  # fmt: skip
        loss = tokens.total / max(tokens.count, 1)
        self.result.loss, self.result.tokens = loss, tokens
        if tokens.per_position is not None:
            batch = len(labels)
            valid = (targets != IGNORE_INDEX).float()
            sums = torch.zeros(batch, device=valid.device).index_add_(0, samples, tokens.per_position)
            counts = torch.zeros(batch, device=valid.device).index_add_(0, samples, valid)
            self.result.sample_loss = sums / counts.clamp(min=1)
        self.hidden = None
        return loss


@contextmanager
def training_objective(model: nn.Module, config: ObjectiveConfig) -> Iterator[StepLosses]:
    """Within the block, forwards of `model` (given `labels` and `logits_to_keep=empty_index(...)`)
    compute the objective; the yielded :class:`StepLosses` holds what the last one computed."""
    lm = causal_lm_of(model)
    result = StepLosses()
    hooks = _Hooks(lm, config, result)
    decoder = lm.get_decoder()
    handles = [
        decoder.register_forward_pre_hook(hooks.before_decoder, with_kwargs=True),
        decoder.register_forward_hook(hooks.after_decoder, with_kwargs=True),
    ]
    previous = vars(lm).get("_loss_function")  # what `loss_function = ...` set before, if anything
    lm.loss_function = hooks.loss
    try:
        yield result
    finally:
        for handle in handles:
            handle.remove()
        if previous is None:
            del lm._loss_function
        else:
            lm.loss_function = previous


def empty_index(device: torch.device) -> torch.Tensor:
    """`logits_to_keep` that selects no position: the model applies its LM head to nothing."""
    return torch.zeros(0, dtype=torch.long, device=device)
