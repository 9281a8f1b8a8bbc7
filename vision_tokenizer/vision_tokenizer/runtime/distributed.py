"""The process context of every job: device, collective backend, rank, world size.

The device is picked automatically (CUDA, else Ascend NPU when `torch_npu` is installed, else
CPU) with the matching backend (nccl / hccl / gloo). Ranks come from the launcher's environment
(torchrun, accelerate: RANK / WORLD_SIZE / LOCAL_RANK). A process group is joined only when the
launcher provided a rendezvous (MASTER_ADDR) and more than one rank runs, so a single process,
or a rank started by hand with RANK/WORLD_SIZE set (tests, sharded re-runs), works without one.
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
    "DTYPES",
    "DistContext",
    "init_distributed",
    "pick_device",
    "backend_for",
    "all_reduce_mean",
    "all_gather_objects",
    "average_tensors",
    "broadcast_module",
]


# The `--dtype` names of the jobs (`vision_tokenizer.job_args.DTYPE_NAMES`) as torch dtypes.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when collectives run (a process group exists and spans more than one rank)."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers the "npu" device)

    return bool(torch.npu.is_available())


def backend_for(device: torch.device) -> str:
    return {"cuda": "nccl", "npu": "hccl"}.get(device.type, "gloo")


def pick_device(local_rank: int) -> torch.device:
    """This local rank's accelerator (made current), or the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if _npu_available():
        torch.npu.set_device(local_rank)
        return torch.device("npu", local_rank)
    return torch.device("cpu")


def init_distributed(
    device: str | torch.device | None = None, timeout_minutes: int = 30, join: bool = True
) -> DistContext:
    """The context of this process; joins the process group when launched with a rendezvous.

    `device` forces a device ("cpu", "cuda", "cuda:1", "npu"); a bare accelerator type gets this
    rank's index. `join=False` only reads the environment (for hosts such as lmms-eval that set
    up the group themselves).
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        chosen = pick_device(local_rank)
    else:
        chosen = torch.device(device)
        if chosen.type in ("cuda", "npu") and chosen.index is None:
            chosen = torch.device(chosen.type, local_rank)
        if chosen.type == "npu":
            _npu_available()  # imports torch_npu so the device type exists
    backend = backend_for(chosen)
    if join and world_size > 1 and "MASTER_ADDR" in os.environ and not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    return DistContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=chosen, backend=backend
    )


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
