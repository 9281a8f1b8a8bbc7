"""MoVQ convolutional pixel encoder and decoder used by DualViTok's pixel branch.

Parameter names mirror the released DualViTok checkpoint (``pixel_encoder.*`` / ``pixel_decoder.*``), so a
state dict loads strictly.  The computations are the official ones, rearranged where that is cheaper and
numerically equivalent:

* the decoder's spatial norm applies its 1x1 modulation convs at the resolution of ``zq`` and then
  broadcasts each value over its nearest-neighbour footprint, instead of resizing ``zq`` first (a 1x1 conv
  commutes with nearest resizing, and power-of-two footprints are exactly what the legacy rule picks);
* the DC down/up shortcuts are a 2x2 mean and a 2x2 replication, written as pooling and broadcasting;
* attention projects q, k and v in one matmul and runs ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["MoVQConfig", "MoVQDecoder", "MoVQEncoder", "DCDownBlock2d", "DCUpBlock2d", "MoVQSpatialNorm"]

NUM_GROUPS = 32
NORM_EPS = 1e-6


@dataclass(frozen=True)
class MoVQConfig:
    """Hyper-parameters of one MoVQ encoder or decoder, under the official config keys.

    Defaults are what the official ``get_movqgan_config`` fills in for a missing key. ``attn_resolutions``
    lists *level indices* (0 = full resolution), not pixel sizes. ``codebook_size`` and ``model_type`` do not
    shape the encoder/decoder; they are kept so official dicts round-trip unchanged.
    """

    ch: int = 256
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (4,)
    z_channels: int = 32
    embed_dim: int = 4
    double_z: bool = False
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 3
    codebook_size: int = 32768
    use_dc_up_down_blocks: bool = False
    model_type: str = "MoVQ"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(int(r) for r in self.attn_resolutions))
        if not self.ch_mult or min(self.ch_mult) < 1:
            raise ValueError(
                f"MoVQConfig.ch_mult must be a non-empty list of positive ints, got {self.ch_mult}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"MoVQConfig.num_res_blocks must be >= 1, got {self.num_res_blocks}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MoVQConfig:
        """Build from an official ``pixel_encoder`` / ``pixel_decoder`` dict; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown MoVQ config key(s) {unknown}; accepted keys are {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-friendly dict with the official keys (lists, not tuples)."""
        out = dataclasses.asdict(self)
        out["ch_mult"] = list(self.ch_mult)
        out["attn_resolutions"] = list(self.attn_resolutions)
        return out

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def spatial_factor(self) -> int:
        """Total down-/up-sampling factor between image and latent grid."""
        return 2 ** (self.num_levels - 1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(NUM_GROUPS, channels, eps=NORM_EPS, affine=True)


def _conv3x3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, padding=1)


def _conv1x1(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1)


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _nearest_affine(normed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``normed * up(scale) + up(shift)`` where ``up`` is legacy nearest resizing to ``normed``'s size.

    With power-of-two integer ratios every low-res value covers an aligned block, so it is broadcast over a
    6-d view instead of materialising the resized maps. Other ratios use ``F.interpolate`` itself, which
    defines the legacy index rule.
    """
    b, c, height, width = normed.shape
    h, w = scale.shape[-2:]
    if (h, w) == (height, width):
        return torch.addcmul(shift, normed, scale)
    ry, rx = height // h, width // w
    if ry * h == height and rx * w == width and _is_power_of_two(ry) and _is_power_of_two(rx):
        blocks = normed.view(b, c, h, ry, w, rx)
        out = torch.addcmul(shift[:, :, :, None, :, None], blocks, scale[:, :, :, None, :, None])
        return out.reshape(b, c, height, width)
    scale = F.interpolate(scale, size=(height, width), mode="nearest")
    shift = F.interpolate(shift, size=(height, width), mode="nearest")
    return torch.addcmul(shift, normed, scale)


class MoVQSpatialNorm(nn.Module):
    """GroupNorm whose output is modulated per pixel by 1x1 convs of the (nearest-resized) quantised latent.

    Conditioning every decoder norm on ``zq`` is what lets the decoder re-inject the codes at each scale.
    """

    def __init__(self, channels: int, zq_channels: int) -> None:
        super().__init__()
        self.norm_layer = _group_norm(channels)
        self.conv_y = _conv1x1(zq_channels, channels)
        self.conv_b = _conv1x1(zq_channels, channels)

    def forward(self, x: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([self.conv_y.weight, self.conv_b.weight])
        bias = torch.cat([self.conv_y.bias, self.conv_b.bias])
        scale, shift = F.conv2d(zq, weight, bias).chunk(2, dim=1)
        return _nearest_affine(self.norm_layer(x), scale, shift)


def _normalize(norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    return norm(x) if zq is None else norm(x, zq)


def _make_norm(channels: int, zq_channels: int | None) -> nn.Module:
    return _group_norm(channels) if zq_channels is None else MoVQSpatialNorm(channels, zq_channels)


class MoVQResnetBlock(nn.Module):
    """Pre-activation residual block (norm, SiLU, 3x3 conv, twice); a 1x1 ``nin_shortcut`` on width change.

    With ``zq_channels`` set, both norms are spatial norms conditioned on ``zq`` (decoder); otherwise plain
    GroupNorm (encoder).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float, zq_channels: int | None) -> None:
        super().__init__()
        self.norm1 = _make_norm(in_channels, zq_channels)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.norm2 = _make_norm(out_channels, zq_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.nin_shortcut = _conv1x1(in_channels, out_channels) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(_normalize(self.norm1, x, zq)))
        h = self.conv2(self.dropout(F.silu(_normalize(self.norm2, h, zq))))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return h + skip


class MoVQAttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with a residual connection."""

    def __init__(self, channels: int, zq_channels: int | None) -> None:
        super().__init__()
        self.norm = _make_norm(channels, zq_channels)
        self.q = _conv1x1(channels, channels)
        self.k = _conv1x1(channels, channels)
        self.v = _conv1x1(channels, channels)
        self.proj_out = _conv1x1(channels, channels)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        b, c, height, width = x.shape
        tokens = _normalize(self.norm, x, zq).flatten(2).transpose(1, 2)  # [B, HW, C]
        qkv_weight = torch.cat([self.q.weight, self.k.weight, self.v.weight]).flatten(1)
        qkv_bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = F.linear(tokens, qkv_weight, qkv_bias).unsqueeze(1).chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        out = F.linear(attended, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + out.transpose(1, 2).reshape(b, c, height, width)


class DCDownBlock2d(nn.Module):
    """Halve the resolution at constant width: 3x3 conv to C/4 then space-to-depth, plus a 2x2-mean shortcut.

    The mean shortcut (pixel-unshuffle, then averaging each run of 4 channels) keeps an identity-like path
    through the downsampling, which is what makes deep DC autoencoders train.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels % 4:
            raise ValueError(f"DCDownBlock2d needs a channel count divisible by 4, got {channels}")
        self.conv = _conv3x3(channels, channels // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(self.conv(x), 2) + F.avg_pool2d(x, 2)


class DCUpBlock2d(nn.Module):
    """Double the resolution at constant width: 3x3 conv to 4C then depth-to-space, plus a nearest-2x shortcut."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, 4 * channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        out = F.pixel_shuffle(self.conv(x), 2)
        out.view(b, c, h, 2, w, 2).add_(x[:, :, :, None, :, None])
        return out


class MoVQDownsample(nn.Module):
    """Classic MoVQ downsampling (``use_dc_up_down_blocks=False``): pad right/bottom by 1, 3x3 conv stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class MoVQUpsample(nn.Module):
    """Classic MoVQ upsampling (``use_dc_up_down_blocks=False``): nearest 2x, then 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, optional attention after each block, optional resampler.

    The resampler is registered under ``downsample`` or ``upsample`` to keep the official key names.
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        attns: Sequence[nn.Module],
        resampler_name: str,
        resampler: nn.Module | None,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)
        self.resampler_name = resampler_name
        if resampler is not None:
            self.add_module(resampler_name, resampler)

    @property
    def resampler(self) -> nn.Module | None:
        return self._modules.get(self.resampler_name)


class _Middle(nn.Module):
    def __init__(self, channels: int, dropout: float, zq_channels: int | None) -> None:
        super().__init__()
        self.block_1 = MoVQResnetBlock(channels, channels, dropout, zq_channels)
        self.attn_1 = MoVQAttnBlock(channels, zq_channels)
        self.block_2 = MoVQResnetBlock(channels, channels, dropout, zq_channels)


def _run(module: nn.Module, use_checkpoint: bool, *args: torch.Tensor | None) -> torch.Tensor:
    """Call ``module``, recomputing its activations in backward when checkpointing is on."""
    if use_checkpoint:
        return checkpoint(module, *args, use_reentrant=False)
    return module(*args)


class _CheckpointableTrunk(nn.Module):
    """Holds the gradient-checkpointing switch shared by encoder and decoder."""

    def __init__(self, gradient_checkpointing: bool) -> None:
        super().__init__()
        self.gradient_checkpointing = gradient_checkpointing

    def _checkpointing_active(self) -> bool:
        return self.gradient_checkpointing and self.training and torch.is_grad_enabled()


class MoVQEncoder(_CheckpointableTrunk):
    """Image ``[B, in_channels, H, W]`` → latent ``[B, z, H/f, W/f]`` with ``f = config.spatial_factor``.

    ``z`` is ``2 * z_channels`` when ``double_z``. With DC blocks, the output conv gets an averaging shortcut
    (mean over consecutive channel groups of the final activation).
    """

    def __init__(self, config: MoVQConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__(gradient_checkpointing)
        self.config = config
        widths = [config.ch * m for m in config.ch_mult]
        self.conv_in = _conv3x3(config.in_channels, config.ch)
        levels = []
        cin = config.ch
        for level, cout in enumerate(widths):
            blocks = [
                MoVQResnetBlock(cin if j == 0 else cout, cout, config.dropout, None)
                for j in range(config.num_res_blocks)
            ]
            attns = [MoVQAttnBlock(cout, None) for _ in blocks] if level in config.attn_resolutions else []
            resampler = None
            if level != config.num_levels - 1:
                resampler = DCDownBlock2d(cout) if config.use_dc_up_down_blocks else MoVQDownsample(cout)
            levels.append(_Level(blocks, attns, "downsample", resampler))
            cin = cout
        self.down = nn.ModuleList(levels)
        self.mid = _Middle(cin, config.dropout, None)
        self.norm_out = _group_norm(cin)
        z_out = 2 * config.z_channels if config.double_z else config.z_channels
        self.conv_out = _conv3x3(cin, z_out)
        if config.use_dc_up_down_blocks and cin % z_out:
            raise ValueError(f"MoVQ encoder width {cin} is not a multiple of its output channels {z_out}")
        self.out_group_size = cin // z_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"MoVQEncoder expects [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        f = cfg.spatial_factor
        if cfg.use_dc_up_down_blocks and (x.shape[-2] % f or x.shape[-1] % f):
            raise ValueError(f"MoVQEncoder input size {tuple(x.shape[-2:])} must be a multiple of {f}")
        ckpt = self._checkpointing_active()
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = _run(block, ckpt, h)
                if len(level.attn):
                    h = _run(level.attn[j], ckpt, h)
            if level.resampler is not None:
                h = _run(level.resampler, ckpt, h)
        h = _run(self.mid.block_1, ckpt, h)
        h = _run(self.mid.attn_1, ckpt, h)
        h = _run(self.mid.block_2, ckpt, h)
        h = F.silu(self.norm_out(h))
        out = self.conv_out(h)
        if cfg.use_dc_up_down_blocks:
            out = out + h.unflatten(1, (-1, self.out_group_size)).mean(dim=2)
        return out


class MoVQDecoder(_CheckpointableTrunk):
    """Latent ``z [B, z_channels, h, w]`` and conditioning ``zq [B, embed_dim, h', w']`` → image.

    Every norm is a spatial norm on ``zq`` (resized to each feature map by nearest). ``up`` is stored in
    level order (``up.0`` is full resolution) but run from the coarsest level; each level has
    ``num_res_blocks + 1`` blocks. With DC blocks, the input conv gets a channel-repeat shortcut of ``z``.
    """

    def __init__(self, config: MoVQConfig, gradient_checkpointing: bool = False) -> None:
        super().__init__(gradient_checkpointing)
        self.config = config
        widths = [config.ch * m for m in config.ch_mult]
        zq_ch = config.embed_dim
        top = widths[-1]
        self.conv_in = _conv3x3(config.z_channels, top)
        if config.use_dc_up_down_blocks and top % config.z_channels:
            raise ValueError(f"MoVQ decoder width {top} is not a multiple of z_channels {config.z_channels}")
        self.in_repeats = top // config.z_channels
        self.mid = _Middle(top, config.dropout, zq_ch)
        levels = []
        for level, cout in enumerate(widths):
            cin = widths[min(level + 1, config.num_levels - 1)]
            blocks = [
                MoVQResnetBlock(cin if j == 0 else cout, cout, config.dropout, zq_ch)
                for j in range(config.num_res_blocks + 1)
            ]
            attns = [MoVQAttnBlock(cout, zq_ch) for _ in blocks] if level in config.attn_resolutions else []
            resampler = None
            if level != 0:
                resampler = DCUpBlock2d(cout) if config.use_dc_up_down_blocks else MoVQUpsample(cout)
            levels.append(_Level(blocks, attns, "upsample", resampler))
        self.up = nn.ModuleList(levels)
        self.norm_out = MoVQSpatialNorm(widths[0], zq_ch)
        self.conv_out = _conv3x3(widths[0], config.out_channels)

    def forward(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if z.ndim != 4 or z.shape[1] != cfg.z_channels:
            raise ValueError(
                f"MoVQDecoder expects z of shape [B, {cfg.z_channels}, h, w], got {tuple(z.shape)}"
            )
        if zq.ndim != 4 or zq.shape[1] != cfg.embed_dim or zq.shape[0] != z.shape[0]:
            raise ValueError(
                f"MoVQDecoder expects zq of shape [{z.shape[0]}, {cfg.embed_dim}, h', w'], got {tuple(zq.shape)}"
            )
        ckpt = self._checkpointing_active()
        h = self.conv_in(z)
        if cfg.use_dc_up_down_blocks:
            h = h + z.repeat_interleave(self.in_repeats, dim=1)
        h = _run(self.mid.block_1, ckpt, h, zq)
        h = _run(self.mid.attn_1, ckpt, h, zq)
        h = _run(self.mid.block_2, ckpt, h, zq)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = _run(block, ckpt, h, zq)
                if len(level.attn):
                    h = _run(level.attn[j], ckpt, h, zq)
            if level.resampler is not None:
                h = _run(level.resampler, ckpt, h)
        return self.conv_out(F.silu(self.norm_out(h, zq)))
