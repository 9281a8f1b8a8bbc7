"""VGG16 LPIPS perceptual distance (Zhang et al., 2018), the variant used for VQ tokenizers.

Written without torchvision: the feature extractor is a plain `nn.Sequential` whose indices
and parameter names match `torchvision.models.vgg16().features`, so torchvision's ImageNet
checkpoint (`vgg16-397923af.pth`) loads directly, and the 1x1 heads use the `lin{k}.model.1`
names of the published LPIPS `vgg.pth`. Both files come from LOCAL paths: nothing is
downloaded. Tests build the module with random weights (`pretrained=False`).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from vision_tokenizer.utils.checkpoint import load_state_dict_file

__all__ = ["LPIPS", "VGG16Features", "VGG16_FEATURE_CHANNELS"]

# torchvision's VGG16 "D" configuration; "M" is a 2x2 max-pool.
_VGG16_LAYOUT: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)
# Indices (in `features`) of the ReLUs whose outputs LPIPS compares: relu1_2 ... relu5_3.
_TAP_INDICES = (3, 8, 15, 22, 29)
VGG16_FEATURE_CHANNELS = (64, 128, 256, 512, 512)
# Input normalisation of LPIPS for images in [-1, 1].
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10


class VGG16Features(nn.Module):
    """The convolutional trunk of VGG16 up to relu5_3, returning the five LPIPS taps."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for item in _VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                channels = int(item)
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAP_INDICES:
                taps.append(x)
            if index == _TAP_INDICES[-1]:
                break
        return taps


class _LinearHead(nn.Module):
    """1x1 conv without bias; the Dropout slot keeps the published key name `model.1.weight`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _unit_normalise(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)


class LPIPS(nn.Module):
    """Perceptual distance between two batches of images in [-1, 1] -> (B, 1, 1, 1).

    Always frozen and in eval mode (calling `.train()` keeps it in eval), because it is a
    fixed metric inside the training loss.
    """

    def __init__(
        self, vgg_weights: str | None = None, lin_weights: str | None = None, pretrained: bool = True
    ) -> None:
        super().__init__()
        if pretrained:
            self._check_paths(vgg_weights, lin_weights)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        for k, channels in enumerate(VGG16_FEATURE_CHANNELS):
            self.add_module(f"lin{k}", _LinearHead(channels))
        if pretrained:
            self.load_pretrained(vgg_weights, lin_weights)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> LPIPS:
        return self

    @staticmethod
    def _check_paths(vgg_weights: str | None, lin_weights: str | None) -> None:
        """Fail before building VGG16 when a weight file is not given or does not exist."""
        for what, path, key in (
            (
                "torchvision VGG16 ImageNet weights (vgg16-397923af.pth)",
                vgg_weights,
                "perceptual_vgg_weights",
            ),
            ("LPIPS linear heads (vgg.pth)", lin_weights, "perceptual_lin_weights"),
        ):
            if not path:
                raise ValueError(
                    f"LPIPS needs the {what}: set vq_loss.{key} to a local file "
                    "(nothing is downloaded), or vq_loss.perceptual_pretrained=False for random weights"
                )
            if not os.path.isfile(path):
                raise FileNotFoundError(f"LPIPS: vq_loss.{key} points to a missing file: {path}")

    def load_pretrained(self, vgg_weights: str | None, lin_weights: str | None) -> None:
        """Load torchvision VGG16 weights and the LPIPS heads from local files."""
        self._check_paths(vgg_weights, lin_weights)
        vgg_state = load_state_dict_file(vgg_weights)
        features = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
        self._load_subset(self.net, features, vgg_weights)
        lin_state = load_state_dict_file(lin_weights)
        heads = {k: v for k, v in lin_state.items() if k.startswith("lin")}
        own = {name: module for name, module in self.named_children() if name.startswith("lin")}
        self._load_subset(nn.ModuleDict(own), heads, lin_weights)

    @staticmethod
    def _load_subset(module: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
        expected = module.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        bad = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
        if missing or unexpected or bad:
            raise ValueError(
                f"LPIPS weights {path}: missing {missing}, unexpected {unexpected}, mis-shaped {bad}"
            )
        module.load_state_dict(state)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        feats_a = self.net((inputs - self.shift) / self.scale)
        feats_b = self.net((targets - self.shift) / self.scale)
        total = 0
        for k, (a, b) in enumerate(zip(feats_a, feats_b)):
            diff = (_unit_normalise(a) - _unit_normalise(b)).pow(2)
            total = total + getattr(self, f"lin{k}")(diff).mean(dim=(2, 3), keepdim=True)
        return total
