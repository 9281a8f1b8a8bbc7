"""Process-group setup for torchrun / single-process runs on CUDA, Ascend NPU or CPU.

The device is picked automatically (CUDA, else NPU when `torch_npu` is installed, else CPU)
with the matching backend (nccl / hccl / gloo). Without torchrun's environment the run is a
single process and no process group is created.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "init_distributed",
    "all_reduce_mean",
    "all_gather_objects",
    "average_tensors",
    "broadcast_module",
]


@dataclass
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers the "npu" device)

    return bool(torch.npu.is_available())


def pick_device(local_rank: int) -> tuple[torch.device, str]:
    """The accelerator for this local rank and the collective backend that goes with it."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    if _npu_available():
        torch.npu.set_device(local_rank)
        return torch.device("npu", local_rank), "hccl"
    return torch.device("cpu"), "gloo"


def init_distributed(device: str | None = None, timeout_minutes: int = 30) -> DistContext:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK and join the process group if needed."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        chosen, backend = pick_device(local_rank)
    else:
        chosen = torch.device(device)
        backend = {"cuda": "nccl", "npu": "hccl"}.get(chosen.type, "gloo")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def all_reduce_mean(values: dict[str, torch.Tensor], ctx: DistContext) -> dict[str, float]:
    """Average named scalars over ranks (one collective) and return Python floats."""
    if not values:
        return {}
    names = sorted(values)
    stacked = torch.stack([values[name].detach().float().reshape(()) for name in names]).to(ctx.device)
    if ctx.enabled:
        dist.all_reduce(stacked)
        stacked /= ctx.world_size
    return dict(zip(names, stacked.tolist()))


def average_tensors(tensors: list[torch.Tensor], ctx: DistContext) -> None:
    """In-place mean over ranks of a list of tensors (one flat collective)."""
    if not ctx.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for tensor in tensors:
        count = tensor.numel()
        tensor.copy_(flat[offset : offset + count].view_as(tensor))
        offset += count


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's `obj`, indexed by rank (a one-element list without a process group)."""
    if not ctx.enabled:
        return [obj]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_module(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's parameters and buffers to every rank (modules built with per-rank seeds)."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)
