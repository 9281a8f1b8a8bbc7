"""PatchGAN discriminator (`disc_type='patchgan'`) used by the DualViTok training loss.

The layer layout reproduces the state-dict keys of the official checkpoints
(`main.{0,2,3,5,6,8,9,11}.*`), so a saved training run's `discriminator` entry loads as is.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NLayerDiscriminator", "init_discriminator_weights"]

_KERNEL = 4
_PAD = 1
_SLOPE = 0.2


def init_discriminator_weights(module: nn.Module) -> None:
    """GAN-style init: convs N(0, 0.02); BatchNorm scale N(1, 0.02) and zero shift."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, mean=1.0, std=0.02)
        nn.init.zeros_(module.bias)


class NLayerDiscriminator(nn.Module):
    """Patch discriminator: logits for overlapping patches of the input image.

    `n_layers` stride-2 convolutions (channels doubling, capped at 8·ndf) followed by one
    stride-1 block and a 1-channel stride-1 output conv. Convs followed by BatchNorm carry
    no bias because the norm's shift makes it redundant.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3, norm_type: str = "bn") -> None:
        super().__init__()
        if norm_type != "bn":
            raise ValueError(f"NLayerDiscriminator: norm_type {norm_type!r} is not supported (choices: 'bn')")
        if n_layers < 1:
            raise ValueError(f"NLayerDiscriminator: n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = [
            nn.Conv2d(input_nc, ndf, _KERNEL, stride=2, padding=_PAD),
            nn.LeakyReLU(_SLOPE, inplace=True),
        ]
        channels = ndf
        for depth in range(1, n_layers + 1):
            stride = 2 if depth < n_layers else 1
            out_channels = ndf * min(2**depth, 8)
            layers += [
                nn.Conv2d(channels, out_channels, _KERNEL, stride=stride, padding=_PAD, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.LeakyReLU(_SLOPE, inplace=True),
            ]
            channels = out_channels
        layers.append(nn.Conv2d(channels, 1, _KERNEL, stride=1, padding=_PAD))
        self.main = nn.Sequential(*layers)
        self.apply(init_discriminator_weights)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) image in [-1, 1] -> (B, 1, h, w) patch logits."""
        return self.main(image)
