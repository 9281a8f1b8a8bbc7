"""`MixedProjector`: maps the tower's semantic and pixel features into the LLM's embedding space.

Two independent MLPs (official `MLPProjector`, `mlp_depth` linear layers with exact GELU between
them) because the two feature kinds differ in size and meaning: `projector_1` takes the ViT
merger output, `projector_2` the MoVQ-encoder output (SPEC-mllm C2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["build_mlp_projector", "MixedProjector"]


def build_mlp_projector(spec: Mapping[str, Any], in_features: int, hidden_size: int) -> nn.Sequential:
    """Linear(in → H), then (GELU, Linear(H → H)) × (mlp_depth − 1); indices match the checkpoints."""
    if spec.get("type", "MLPProjector") != "MLPProjector":
        raise ValueError(f"projector type must be 'MLPProjector', got {spec.get('type')!r}")
    if spec.get("pre_norm", False):
        raise ValueError("MLPProjector with pre_norm=True is not used by ILLUME+ and not supported")
    depth = int(spec.get("mlp_depth", 2))
    if depth < 1:
        raise ValueError(f"mlp_depth must be >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_features, hidden_size)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
    return nn.Sequential(*layers)


class MixedProjector(nn.Module):
    """Projects [semantic (…, N_s, D_s), pixel (…, N_p, D_p)] and concatenates along the token axis."""

    def __init__(self, spec: Mapping[str, Any], in_features: Sequence[int], hidden_size: int) -> None:
        super().__init__()
        if len(in_features) != 2:
            raise ValueError(
                f"MixedProjector needs two input sizes [semantic, pixel], got {list(in_features)}"
            )
        self.projector_1 = build_mlp_projector(spec.get("projector_cfg1", {}), in_features[0], hidden_size)
        self.projector_2 = build_mlp_projector(spec.get("projector_cfg2", {}), in_features[1], hidden_size)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Features arrive in the tower's precision and are cast to the projector's."""
        semantic, pixel = features
        dtype = _parameter_dtype(self)
        return torch.cat([self.projector_1(semantic.to(dtype)), self.projector_2(pixel.to(dtype))], dim=-2)


def _parameter_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of `module`'s first parameter, read without `module.<name>.weight`.

    Under DeepSpeed ZeRO-3 that attribute access gathers the partitioned weight on the spot;
    iterating `parameters()` only reads the (still correct) dtype of the local shard.
    """
    return next(module.parameters()).dtype
