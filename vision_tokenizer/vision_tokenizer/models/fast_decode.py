"""Inference-only DualViTok decode path: code indices → images, as fast as the device allows.

Decoding generated images is the tokenizer's hot path at inference and evaluation time. The
training module runs fp32 weights (under autocast at best) in NCHW layout; this path takes a
copy of just the decode modules (codebooks, post-quant conv, MoVQ decoder) and

* casts the weights to `dtype` (bf16 by default; the bicubic merge of the code maps stays fp32,
  as in the model);
* keeps weights and activations `channels_last`, the layout cuDNN's fast convolutions use;
* on CUDA (only: inductor on the CPU is slow to compile and brings little) compiles the
  decoder, so each GroupNorm with its spatial affine and the SiLU after it become one fused
  kernel instead of four passes over the feature map.

With `dtype=torch.float32` and `compile=False` the arithmetic is the model's own, so outputs stay
within the golden tolerance; the model passed in is left untouched.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vision_tokenizer.models.dualvitok import DualViTok

__all__ = ["FastDecoder"]


class FastDecoder(nn.Module):
    def __init__(
        self,
        model: DualViTok,
        dtype: torch.dtype = torch.bfloat16,
        channels_last: bool = True,
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.semantic_quantizer = copy.deepcopy(model.semantic_quantizer)
        self.pixel_quantizer = copy.deepcopy(model.pixel_quantizer)
        self.post_quant_conv = copy.deepcopy(model.pixel_post_quant_conv)
        self.decoder = copy.deepcopy(model.pixel_decoder)
        self.eval().requires_grad_(False)
        # Codebook lookups stay fp32 (exact codes); the convolutional path runs in `dtype`.
        self.post_quant_conv.to(dtype)
        self.decoder.to(dtype)
        self.channels_last = channels_last
        if channels_last:
            self.post_quant_conv.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)
        device = model.device
        self.compiled = device.type == "cuda" if compile is None else compile
        self._decode = torch.compile(self.decoder, dynamic=False) if self.compiled else self.decoder

    @property
    def dtype(self) -> torch.dtype:
        return self.post_quant_conv.weight.dtype

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.inference_mode()
    def decode(self, q_semantic: torch.Tensor, q_pixel: torch.Tensor) -> torch.Tensor:
        """fp32 images [B, 3, 16*hp, 16*wp] from code maps (semantic [B, d, hs, ws], pixel [B, d, hp, wp])."""
        upsampled = F.interpolate(q_semantic.float(), size=q_pixel.shape[-2:], mode="bicubic", align_corners=False)
        quant = self._layout(torch.cat([upsampled, q_pixel.float()], dim=1))
        return self._decode(self.post_quant_conv(quant), quant).float().contiguous()

    @torch.inference_mode()
    def decode_code(
        self, idx_semantic: torch.Tensor | Sequence[torch.Tensor], idx_pixel: torch.Tensor | Sequence[torch.Tensor]
    ) -> torch.Tensor | list[torch.Tensor]:
        """Images from index grids [B, hs, ws] / [B, hp, wp]; lists of grids (any sizes) give lists."""
        if isinstance(idx_semantic, torch.Tensor):
            codes_semantic = self.semantic_quantizer.indices_to_codes(idx_semantic)
            codes_pixel = self.pixel_quantizer.indices_to_codes(idx_pixel)
            return self.decode(codes_semantic, codes_pixel)
        return [self.decode_code(s, p) for s, p in zip(idx_semantic, idx_pixel, strict=True)]
