"""The one place the tokenizer package reads weights: format detection, safe loading, key report.

Official DualViTok checkpoints come as a flat state dict or wrapped under `"model"`, `"ema"` or
`"state_dict"`, stored as `.bin` / `.pt` / `.pth` (pickle) or `.safetensors`, alone or in a folder.
Pickles are opened with `weights_only=True` only; anything that does not fit the model is reported
key by key in one error instead of being dropped.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file as load_safetensors
from torch import nn

from vision_tokenizer.utils.user_errors import UserError

__all__ = [
    "CheckpointError",
    "PICKLE_SUFFIXES",
    "WEIGHT_FILE_NAMES",
    "find_weight_file",
    "load_state_dict_file",
    "unwrap_state_dict",
    "load_into",
    "load_weight_folder",
]

logger = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
# Looked for, in this order, when a folder is given.
WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth")
_SHARD_INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_WRAPPER_KEYS = ("model", "state_dict")
_MAX_LISTED = 25


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names file and keys."""


def find_weight_file(folder: str | os.PathLike) -> Path:
    """The weight file (or shard index) inside `folder`, by the conventional names, else the only candidate."""
    folder = Path(folder)
    for name in (*WEIGHT_FILE_NAMES, *_SHARD_INDEX_NAMES):
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix in (*PICKLE_SUFFIXES, SAFETENSORS_SUFFIX)
    )
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CheckpointError(
            f"no weight file in {folder} (looked for {', '.join(WEIGHT_FILE_NAMES)}, *.safetensors, *.bin, *.pt, *.pth)"
        )
    raise CheckpointError(
        f"several weight files in {folder}: {[p.name for p in candidates]}; pass the file to load"
    )


def _load_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as error:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # noqa: BLE001 - only used to enrich the message below
            unsafe = []
        detail = f" (it pickles Python objects: {unsafe})" if unsafe else ""
        raise CheckpointError(
            f"cannot load {path} safely{detail}. Only tensors, dicts and plain values are read "
            "(torch.load(weights_only=True)). If you trust the file, re-save just its weights, e.g. "
            "torch.save(torch.load(path, weights_only=False)['model'], 'weights.pt')."
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from error


def _load_sharded(index_path: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"invalid shard index {index_path}: {error}") from error
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        loaded = _load_single(index_path.parent / shard)
        if not isinstance(loaded, Mapping):
            raise CheckpointError(f"shard {index_path.parent / shard} does not hold a state dict")
        state.update(loaded)
    return state


def _load_single(path: Path) -> object:
    if path.name.endswith(".index.json"):
        return _load_sharded(path)
    if path.suffix == SAFETENSORS_SUFFIX:
        try:
            return load_safetensors(str(path))
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise CheckpointError(f"cannot read safetensors file {path}: {error}") from error
    if path.suffix in PICKLE_SUFFIXES:
        return _load_pickle(path)
    raise CheckpointError(
        f"unsupported checkpoint format {path.suffix!r} for {path}; expected "
        f"{', '.join((SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES))} or a folder"
    )


def _is_state_dict(obj: object) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def unwrap_state_dict(
    checkpoint: object, use_ema: bool = False, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Pick the weights out of a loaded checkpoint: `ema` (only if `use_ema`), `model`, `state_dict` or flat."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a state dict")
    if use_ema:
        if not _is_state_dict(checkpoint.get("ema")):
            raise CheckpointError(
                f"{source} has no 'ema' weights (top-level keys: {sorted(map(str, checkpoint))[:_MAX_LISTED]}); "
                "load it with use_ema=False"
            )
        return dict(checkpoint["ema"])
    for key in _WRAPPER_KEYS:
        if _is_state_dict(checkpoint.get(key)):
            return dict(checkpoint[key])
    if _is_state_dict(checkpoint):
        return dict(checkpoint)
    raise CheckpointError(
        f"{source} is not a state dict and has no 'model' / 'state_dict' / 'ema' entry of tensors "
        f"(top-level keys: {sorted(map(str, checkpoint))[:_MAX_LISTED]})"
    )


def load_state_dict_file(path: str | os.PathLike, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read weights from a file or folder in any official layout, on the CPU, without running pickled code."""
    path = Path(path)
    if path.is_dir():
        path = find_weight_file(path)
    elif not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return unwrap_state_dict(_load_single(path), use_ema=use_ema, source=str(path))


def load_weight_folder(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All weights of a transformers-style folder: a shard index (safetensors or `.bin`), else every
    `*.safetensors`, else every `*.bin` file, merged (pickles with `weights_only=True`)."""
    folder = Path(folder)
    for name in _SHARD_INDEX_NAMES:
        if (folder / name).is_file():
            return _load_sharded(folder / name)
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(folder.glob(pattern))
        if files:
            state: dict[str, torch.Tensor] = {}
            for path in files:
                state.update(unwrap_state_dict(_load_single(path), source=str(path)))
            return state
    raise CheckpointError(f"no weights in {folder} (looked for {', '.join(_SHARD_INDEX_NAMES)}, *.safetensors, *.bin)")


def _listing(title: str, keys: list[str]) -> str:
    shown = keys[:_MAX_LISTED]
    more = f"\n    ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"  {title} ({len(keys)}):\n" + "\n".join(f"    {k}" for k in shown) + more


def _top_prefixes(keys: list[str]) -> list[str]:
    return sorted({key.split(".", 1)[0] for key in keys})


def load_into(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: bool = True,
    name: str = "model",
    assign: bool = False,
) -> tuple[list[str], list[str]]:
    """Load `state_dict` into `module`, reporting every missing / unexpected / mis-shaped key by name.

    Shape mismatches are always an error; missing and unexpected keys are an error when `strict`,
    otherwise they are logged and returned as `(missing, unexpected)`. A checkpoint that shares
    (almost) no keys with the module is reported as belonging to a different model.
    """
    expected = module.state_dict()
    given = set(state_dict)
    missing = [k for k in expected if k not in given]
    unexpected = sorted(k for k in given if k not in expected)
    misshaped = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs {name} {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    matched = len(expected) - len(missing)
    if expected and given and matched == 0:
        raise CheckpointError(
            f"this checkpoint does not belong to {name}: none of its {len(given)} keys match. Its keys start "
            f"with {_top_prefixes(sorted(given))[:10]} while {name} expects {_top_prefixes(list(expected))[:10]} "
            f"(e.g. an MLLM or another model's checkpoint?)"
        )
    if misshaped or (strict and (missing or unexpected)):
        parts = [f"checkpoint does not fit {name}:"]
        if missing:
            parts.append(_listing("missing keys", missing))
        if unexpected:
            parts.append(_listing("unexpected keys", unexpected))
        if misshaped:
            parts.append(_listing("mis-shaped keys", misshaped))
        raise CheckpointError("\n".join(parts))
    if missing or unexpected:
        logger.warning(
            "loading %s non-strictly: %d missing keys %s, %d unexpected keys %s",
            name,
            len(missing),
            missing[:_MAX_LISTED],
            len(unexpected),
            unexpected[:_MAX_LISTED],
        )
    module.load_state_dict(
        {k: v for k, v in state_dict.items() if k in expected}, strict=False, assign=assign
    )
    return missing, unexpected
