"""Learning-rate schedule equivalent to the official `AnnealingLR` (warmup, then constant /
linear / cosine decay), one instance per optimizer.

The state dict uses the official keys `{warmup_iter, num_iters, decay_style, end_iter,
decay_ratio}`. The official loop attached the discriminator's scheduler to the generator
optimizer; here each scheduler owns exactly the optimizer it is built with.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer

__all__ = ["AnnealingLR", "DECAY_STYLES"]

DECAY_STYLES = ("constant", "linear", "cosine")


class AnnealingLR:
    """Linear warmup from 0 over `warmup_iter` steps, then `decay_style` over the remaining
    `end_iter` steps from `start_lr` down to `start_lr * decay_ratio` (constant: no decay).

    `step()` is called once before each optimizer step; it advances the counter and sets the
    learning rate of every parameter group for that step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        start_lr: float,
        warmup_iter: int,
        num_iters: int,
        decay_style: str = "constant",
        last_iter: int = 0,
        decay_ratio: float = 0.1,
    ) -> None:
        if decay_style not in DECAY_STYLES:
            raise ValueError(
                f"lr_decay_style={decay_style!r} is not supported (choices: {list(DECAY_STYLES)})"
            )
        self.optimizer = optimizer
        self.start_lr = start_lr
        self.warmup_iter = int(warmup_iter)
        self.end_iter = max(1, int(num_iters) - self.warmup_iter)
        self.decay_style = decay_style
        self.decay_ratio = decay_ratio
        self.num_iters = int(last_iter)
        self._apply(self.get_lr())

    def get_lr(self) -> float:
        if self.warmup_iter > 0 and self.num_iters <= self.warmup_iter:
            return self.start_lr * self.num_iters / self.warmup_iter
        if self.decay_style == "constant":
            return self.start_lr
        progress = min(1.0, (self.num_iters - self.warmup_iter) / self.end_iter)
        floor = self.start_lr * self.decay_ratio
        if self.decay_style == "linear":
            return self.start_lr - (self.start_lr - floor) * progress
        return floor + (self.start_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _apply(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self) -> float:
        self.num_iters += 1
        lr = self.get_lr()
        self._apply(lr)
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {
            "warmup_iter": self.warmup_iter,
            "num_iters": self.num_iters,
            "decay_style": self.decay_style,
            "end_iter": self.end_iter,
            "decay_ratio": self.decay_ratio,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warmup_iter = int(state["warmup_iter"])
        self.num_iters = int(state["num_iters"])
        self.decay_style = state["decay_style"]
        self.end_iter = int(state["end_iter"])
        self.decay_ratio = float(state["decay_ratio"])
        self._apply(self.get_lr())
