"""Exponential moving average of the tokenizer weights (config `ema=True`).

The EMA covers the whole `state_dict` (floating tensors are averaged, the rest copied), so
the stored `"ema"` entry loads into a DualViTok exactly like `"model"`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ModelEMA"]


class ModelEMA:
    """Keeps `ema = decay * ema + (1 - decay) * weights`, updated after each generator step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            target = self.shadow[key]
            if target.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1.0 - self.decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not match the model: missing {missing}, unexpected {unexpected}")
        for key, value in state.items():
            self.shadow[key].copy_(value)
