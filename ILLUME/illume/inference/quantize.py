"""Weight-only quantization of the LLM's decoder layers through torchao (low-VRAM inference).

Decode steps are memory-bound: they read every weight once per step, so storing the layer
weights in 8 bits halves both the memory and the bytes a step reads. Only the Linear layers of
the transformer body are quantized; the embedding table and the LM head stay in the model dtype
(the engine slices the head per code level, which quantized tensor subclasses do not support).

* `int8`: per-row int8 weights (`Int8WeightOnlyConfig`), runs on CPU and CUDA;
* `fp8`: e4m3 weights (`Float8WeightOnlyConfig`), CUDA devices of compute capability >= 8.9 only.

Quantizing replaces the fused q/k/v and gate/up weights of `decoder.fuse_projections`: the
decoder then calls the (quantized) modules themselves.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QUANTIZE_MODES", "quantize_llm", "decoder_layer_bytes"]

QUANTIZE_MODES = ("none", "int8", "fp8")


def _body_linears(model: nn.Module) -> set[int]:
    return {id(m) for m in model.model.layers.modules() if isinstance(m, nn.Linear)}


def quantize_llm(model: nn.Module, mode: str) -> nn.Module:
    """Quantize the decoder layers' Linear weights of a Qwen2-style causal LM in place."""
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {mode!r}")
    if mode == "none":
        return model
    try:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise ValueError(f"quantize={mode!r} needs torchao: pip install torchao") from None
    device = model.get_input_embeddings().weight.device
    if mode == "fp8" and (device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9)):
        raise ValueError("quantize='fp8' needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper); use 'int8'")
    model.__dict__.pop("_illume_fused_layers", None)  # the fused copies would keep the full weights
    body = _body_linears(model)
    config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
    quantize_(model, config, filter_fn=lambda module, _name: id(module) in body)
    return model


def decoder_layer_bytes(model: nn.Module) -> int:
    """Bytes held by the decoder layers (quantized data and scales included)."""
    from torchao.utils import get_model_size_in_bytes

    return sum(get_model_size_in_bytes(layer) for layer in model.model.layers)
