"""GAN objectives for the tokenizer: discriminator losses, generator losses, LeCAM regulariser.

All functions take raw discriminator logits and return a scalar tensor. The names are the
official `disc_loss` / `gen_adv_loss` config values.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DISC_LOSSES",
    "GEN_ADV_LOSSES",
    "hinge_d_loss",
    "vanilla_d_loss",
    "non_saturating_d_loss",
    "hinge_gen_loss",
    "non_saturating_gen_loss",
    "adopt_weight",
    "LeCAMEMA",
    "get_disc_loss",
    "get_gen_adv_loss",
]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (E[softplus(-D(x))] + E[softplus(D(x_hat))])."""
    return 0.5 * (F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean())


def non_saturating_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with real = 1 and fake = 0 (each term averaged, then summed)."""
    return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()


def hinge_gen_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-E[D(x_hat)]: the generator pushes its logits up."""
    return -logits_fake.mean()


def non_saturating_gen_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the fake logits against the 'real' label."""
    return F.softplus(-logits_fake).mean()


DISC_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_d_loss,
    "vanilla": vanilla_d_loss,
    "non-saturating": non_saturating_d_loss,
}
GEN_ADV_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "hinge": hinge_gen_loss,
    "non-saturating": non_saturating_gen_loss,
}
_ALIASES = {"non_saturate": "non-saturating", "non_saturating": "non-saturating"}


def _lookup(table: dict, name: str, key: str):
    resolved = _ALIASES.get(name, name)
    if resolved not in table:
        raise ValueError(f"vq_loss.{key}={name!r} is not supported (choices: {sorted(table)})")
    return table[resolved]


def get_disc_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return _lookup(DISC_LOSSES, name, "disc_loss")


def get_gen_adv_loss(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return _lookup(GEN_ADV_LOSSES, name, "gen_adv_loss")


def adopt_weight(weight: float, step: int, threshold: int, value: float = 0.0) -> float:
    """`weight` once `step` has reached `threshold`, `value` before (delayed GAN start)."""
    return value if step < threshold else weight


class LeCAMEMA(nn.Module):
    """Running means of real/fake logits for the LeCAM regulariser (Tseng et al., 2021).

    Kept as buffers so that they travel with the checkpoint and a resumed run continues
    with the same statistics.
    """

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("logits_real_ema", torch.zeros(()))
        self.register_buffer("logits_fake_ema", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> None:
        self.logits_real_ema.lerp_(logits_real.float().mean(), 1.0 - self.decay)
        self.logits_fake_ema.lerp_(logits_fake.float().mean(), 1.0 - self.decay)

    def regulariser(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
        """E[relu(D(x) - ema_fake)^2] + E[relu(ema_real - D(x_hat))^2]."""
        return (
            F.relu(logits_real - self.logits_fake_ema).pow(2).mean()
            + F.relu(self.logits_real_ema - logits_fake).pow(2).mean()
        )
