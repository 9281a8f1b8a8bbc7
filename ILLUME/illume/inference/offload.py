"""Low-VRAM inference: keep the image decoders (DualViTok, SDXL) on the CPU between uses.

During LLM decoding the decoders sit idle; with `offload` they live in host memory and visit the
accelerator only for `IllumePipeline.decode`, so the LLM's weights and KV cache have the device
to themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["resident"]


@contextmanager
def resident(module: Any, device: torch.device, offload: bool) -> Iterator[Any]:
    """Use `module` (anything with `.to(device)`) on `device` inside the block; with `offload` it
    goes back to the CPU afterwards (and CUDA's cached blocks are released)."""
    if not offload or module is None:
        yield module
        return
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()
