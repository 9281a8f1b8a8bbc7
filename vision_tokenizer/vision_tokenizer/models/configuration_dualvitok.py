"""`DualViTokConfig`: the DualViTok architecture as a typed `PretrainedConfig`, and where configs come from.

The defaults are the released tokenizer (`dualvitok_anyres_max512.py`). The official configs are
shipped inside this package as Python dicts (`OFFICIAL_CONFIGS`), so the name a released MLLM
`config.json` carries (`configs/example/dualvitok/dualvitok_anyres_max512.py`) resolves from any
working directory and any install, without reading (let alone executing) a file.

`read_dualvitok_config` is the one reader of DualViTok configs from outside: an official name, a
dict (the official `vq_model` dict, a whole loaded config, or an HF-style `config.json`), a JSON
file, a folder, or — only when `allow_python=True`, i.e. the user named the file themselves — a
Python (mmengine) config, which is code and runs when read.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig

from ..utils.user_errors import UserError
from .movq import MoVQConfig

__all__ = [
    "DualViTokConfig",
    "DualViTokConfigError",
    "DualViTokConfigNotFound",
    "MODEL_TYPE",
    "OFFICIAL_CONFIGS",
    "official_config_name",
    "read_dualvitok_config",
]

MODEL_TYPE = "DualViTok"
# Explicit ViT hyper-parameters next to `config` in a vq_model dict (golden JSON files).
VIT_CONFIG_KEY = "_semantic_encoder_vit_config"
PARTS = (
    "semantic_encoder",
    "semantic_quantizer",
    "semantic_decoder",
    "pixel_encoder",
    "pixel_quantizer",
    "pixel_decoder",
)
SCALARS = (
    "pixel_drop_rate",
    "pixel_drop_batch_rate",
    "pixel_noise_type",
    "semantic_detail_merge_type",
    "infer_interpolate",
)
# The keys each part accepts (the official names).
SEMANTIC_ENCODER_KEYS = frozenset(
    {"semantic_encoder", "num_blocks", "proj_layer", "z_channels", "embed_dim", "attn_implementation", "target_mlp"}
)
SEMANTIC_DECODER_KEYS = frozenset(
    {"z_channels", "embed_dim", "output_channels", "num_blocks", "proj_layer", "attn_implementation"}
)
QUANTIZER_KEYS = frozenset(
    {"type", "dim", "codebook_size", "channel_first", "rotation_trick", "commitment_weight",
     "input_to_quantize_commit_loss_weight"}
)  # fmt: skip
# Keys of an HF-style config.json that describe the file, not the architecture.
_HF_META_KEYS = frozenset(
    {"architectures", "auto_map", "model_type", "transformers_version", "torch_dtype", "dtype",
     "_name_or_path", "_note", "type"}
)  # fmt: skip

_PIXEL_CODEBOOK = 3 * 32768
_RELEASED_PARTS: dict[str, dict[str, Any]] = {
    "semantic_encoder": {
        "semantic_encoder": "Emova-ollm/qwen2vit600m",
        "target_mlp": "norm",
        "num_blocks": 4,
        "embed_dim": 1280,
        "z_channels": 32,
        "proj_layer": "linear",
        "attn_implementation": "sdpa",
    },
    "semantic_quantizer": {
        "type": "SimVQ", "codebook_size": 32768, "dim": 32, "rotation_trick": False, "channel_first": True
    },
    "semantic_decoder": {
        "num_blocks": 4,
        "embed_dim": 1280,
        "z_channels": 32,
        "output_channels": 3584,
        "proj_layer": "linear_norm",
        "attn_implementation": "sdpa",
    },
    "pixel_encoder": {
        "in_channels": 3, "out_channels": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
        "attn_resolutions": [4], "dropout": 0.0, "z_channels": 32, "embed_dim": 32, "double_z": False,
        "codebook_size": _PIXEL_CODEBOOK, "use_dc_up_down_blocks": True,
    },
    "pixel_quantizer": {
        "type": "SimVQ", "codebook_size": _PIXEL_CODEBOOK, "dim": 32, "rotation_trick": False, "channel_first": True
    },
    "pixel_decoder": {
        "in_channels": 3, "out_channels": 3, "ch": 384, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
        "attn_resolutions": [4], "dropout": 0.0, "z_channels": 64, "embed_dim": 64, "double_z": False,
        "codebook_size": _PIXEL_CODEBOOK, "use_dc_up_down_blocks": True,
    },
}  # fmt: skip

# The official DualViTok configs by file stem: what differs from the released architecture.
OFFICIAL_CONFIGS: dict[str, dict[str, Any]] = {
    "dualvitok_anyres_max512": {},
    "dualvitok_fix256": {"pixel_drop_rate": 0.1},
}
# Where the official repository keeps them; a checkpoint names them by this path.
_OFFICIAL_DIR = ("configs", "example", "dualvitok")


class DualViTokConfigError(UserError, ValueError):
    """A DualViTok config that cannot be used (one line: which source, and what is allowed)."""


class DualViTokConfigNotFound(UserError, FileNotFoundError):
    """A named DualViTok config file that is nowhere it was looked for (the message lists where)."""


@strict
class DualViTokConfig(PretrainedConfig):
    r"""The DualViTok architecture; every part defaults to the released tokenizer, and each part's
    keys are checked when the config is made (not when the model is built).

    semantic_encoder / semantic_decoder: SemanticEncoder / SemanticDecoder options (the encoder's
        `semantic_encoder` key names a built-in ViT).
    semantic_quantizer / pixel_quantizer: SimVQ options (`dim`, `codebook_size`, ...).
    pixel_encoder / pixel_decoder: MoVQ options (official keys, see `MoVQConfig`).
    semantic_vit_config: explicit ViT hyper-parameters overriding the encoder's ViT name.
    pixel_drop_rate / pixel_drop_batch_rate / pixel_noise_type: training-time pixel-code dropout.
    """

    model_type = "dualvitok"

    semantic_encoder: dict | None = None
    semantic_quantizer: dict | None = None
    semantic_decoder: dict | None = None
    pixel_encoder: dict | None = None
    pixel_quantizer: dict | None = None
    pixel_decoder: dict | None = None
    pixel_drop_rate: float | None = None
    pixel_drop_batch_rate: float = 0.1
    pixel_noise_type: str = "random"
    semantic_detail_merge_type: str = "cat"
    infer_interpolate: bool | None = None
    semantic_vit_config: dict | None = None

    def __post_init__(self, **kwargs):
        for part in PARTS:
            if getattr(self, part) is None:
                setattr(self, part, copy.deepcopy(_RELEASED_PARTS[part]))
            elif not isinstance(getattr(self, part), Mapping):
                raise TypeError(f"DualViTok config {part!r} must be a dict, got {type(getattr(self, part)).__name__}")
            else:
                setattr(self, part, _plain(getattr(self, part)))
        checked_keys("semantic_encoder", self.semantic_encoder, SEMANTIC_ENCODER_KEYS)
        checked_keys("semantic_decoder", self.semantic_decoder, SEMANTIC_DECODER_KEYS)
        for part in ("semantic_quantizer", "pixel_quantizer"):
            checked_keys(part, getattr(self, part), QUANTIZER_KEYS)
        for part in ("pixel_encoder", "pixel_decoder"):
            try:
                MoVQConfig.from_dict(getattr(self, part))
            except ValueError as error:
                raise ValueError(f"DualViTok config {part!r}: {error}") from None
        super().__post_init__(**kwargs)

    @property
    def pixel_encoder_config(self) -> MoVQConfig:
        return MoVQConfig.from_dict(self.pixel_encoder)

    @property
    def pixel_decoder_config(self) -> MoVQConfig:
        return MoVQConfig.from_dict(self.pixel_decoder)

    # ------------------------------------------------------------------ the official dict form
    @classmethod
    def from_vq_model(cls, spec: Mapping[str, Any], source: str = "DualViTok config") -> DualViTokConfig:
        """From the official `vq_model` dict `{type, config[, _semantic_encoder_vit_config]}`."""
        spec = _plain(spec)
        unknown = sorted(set(spec) - {"type", "config", VIT_CONFIG_KEY, "_note"})
        if unknown or not isinstance(spec.get("config"), Mapping):
            raise ValueError(
                f"{source}: expected a vq_model dict {{'type': 'DualViTok', 'config': {{...}}}}; "
                f"got keys {sorted(spec)}" + (f" (unknown: {unknown})" if unknown else "")
            )
        if spec.get("type", MODEL_TYPE) != MODEL_TYPE:
            raise ValueError(f"{source}: vq_model type {spec['type']!r} is not supported (choices: [{MODEL_TYPE!r}])")
        return cls._from_parts(spec["config"], spec.get(VIT_CONFIG_KEY), source)

    @classmethod
    def _from_parts(cls, values: Mapping[str, Any], vit: Any, source: str) -> DualViTokConfig:
        allowed = set(PARTS) | set(SCALARS)
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise ValueError(f"{source}: unknown DualViTok config keys {unknown}; allowed: {sorted(allowed)}")
        return cls(**dict(values), semantic_vit_config=vit)

    def to_vq_model(self) -> dict[str, Any]:
        """The official `vq_model` dict (what `DualViTok.save_pretrained` writes as config.json)."""
        spec: dict[str, Any] = {
            "type": MODEL_TYPE,
            "config": {key: copy.deepcopy(getattr(self, key)) for key in (*PARTS, *SCALARS)},
        }
        if self.semantic_vit_config is not None:
            spec[VIT_CONFIG_KEY] = copy.deepcopy(self.semantic_vit_config)
        return spec

    @classmethod
    def from_official(cls, name: str) -> DualViTokConfig:
        """One of the configs shipped with the package, by stem (`dualvitok_anyres_max512`)."""
        if name not in OFFICIAL_CONFIGS:
            raise ValueError(f"unknown official DualViTok config {name!r}; choose one of {sorted(OFFICIAL_CONFIGS)}")
        return cls(**copy.deepcopy(OFFICIAL_CONFIGS[name]))


def checked_keys(section: str, values: Mapping[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    """A copy of one part's options; a key the part does not know is an error naming both."""
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ValueError(f"unknown keys {unknown} in DualViTok config {section!r}; allowed: {sorted(allowed)}")
    return dict(values)


def _plain(value: Any) -> Any:
    """ConfigDicts / tuples -> plain JSON-compatible dicts and lists (a copy)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return copy.deepcopy(value)


def official_config_name(source: str | os.PathLike) -> str | None:
    """The stem of an official config named the way checkpoints and configs name it, else None.

    Accepted: the stem (`dualvitok_anyres_max512`), the file name, or the official relative path
    `configs/example/dualvitok/<stem>.py` (optionally prefixed by `./` or `../`).
    """
    path = PurePath(os.fspath(source))
    if path.is_absolute() or path.stem not in OFFICIAL_CONFIGS or path.suffix not in ("", ".py"):
        return None
    parents = tuple(part for part in path.parent.parts if part not in (".", ".."))
    return path.stem if parents in ((), _OFFICIAL_DIR) else None


def _from_mapping(values: Mapping[str, Any], source: str) -> DualViTokConfig:
    """A vq_model dict, a whole config holding one under `vq_model`, or an HF-style config.json."""
    if "vq_model" in values and "config" not in values:
        values = values["vq_model"]
    if "config" in values and set(values) - _HF_META_KEYS <= {"config", VIT_CONFIG_KEY}:
        return DualViTokConfig.from_vq_model(
            {k: v for k, v in values.items() if k in ("type", "config", VIT_CONFIG_KEY)}, source
        )
    # HF style: the parts at the top level, beside `model_type` / `architectures` / `auto_map`.
    kind = str(values.get("model_type") or values.get("type") or MODEL_TYPE)
    if kind.lower() != MODEL_TYPE.lower():
        raise ValueError(f"{source}: model_type {kind!r} is not a DualViTok config")
    parts = {k: v for k, v in values.items() if k not in _HF_META_KEYS}
    vit = parts.pop("semantic_vit_config", parts.pop(VIT_CONFIG_KEY, None))
    return DualViTokConfig._from_parts(parts, vit, source)


def _read_json(path: Path) -> Mapping[str, Any]:
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"invalid JSON in DualViTok config {path}: {error}") from error
    if not isinstance(values, Mapping):
        raise ValueError(f"DualViTok config {path} holds a {type(values).__name__}, not a JSON object")
    return values


def read_dualvitok_config(
    source: DualViTokConfig | Mapping[str, Any] | str | os.PathLike,
    *,
    search_dirs: tuple[str | os.PathLike, ...] | list[str | os.PathLike] = (),
    allow_python: bool = False,
) -> DualViTokConfig:
    """Resolve any DualViTok config source (see the module docstring) to a `DualViTokConfig`.

    A relative path is looked for in `search_dirs` (e.g. the checkpoint folder), then the current
    directory. Python configs execute code, so they are read only with `allow_python=True`;
    otherwise naming one is an error that says how to pass it explicitly.
    """
    if isinstance(source, DualViTokConfig):
        return source
    if hasattr(source, "to_dict") and not isinstance(source, Mapping):  # a loaded mmengine Config
        source = source.to_dict()
    if isinstance(source, Mapping):
        return _from_mapping(source, "DualViTok config dict")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"DualViTok config must be a dict, a name or a path, got {type(source).__name__}")
    official = official_config_name(source)
    if official is not None:
        return DualViTokConfig.from_official(official)
    candidate = Path(source).expanduser()
    tried = [candidate] if candidate.is_absolute() else [Path(d) / candidate for d in search_dirs] + [candidate]
    path = next((p for p in tried if p.exists()), None)
    if path is None:
        raise DualViTokConfigNotFound(
            f"DualViTok config {os.fspath(source)!r} not found; looked at: {', '.join(map(str, tried))} "
            f"(official names: {', '.join(sorted(OFFICIAL_CONFIGS))})"
        )
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json":
        return _from_mapping(_read_json(path), str(path))
    if path.suffix == ".py":
        if not allow_python:
            raise DualViTokConfigError(
                f"refusing to execute the Python config {path}: configs named by a model folder are "
                "read as JSON only; pass a Python config explicitly (dualvitok_config= / --dualvitok-config) "
                "if you trust it"
            )
        from ..utils.config import load_config

        loaded = load_config(path)
        if "vq_model" not in loaded:
            raise ValueError(f"config file {path} has no 'vq_model' entry")
        return _from_mapping(loaded.vq_model.to_dict(), str(path))
    raise ValueError(f"DualViTok config must be a .json or .py file or a folder, got {path}")
