"""Write and convert ILLUME+ checkpoints in the HF format: a self-contained, transformers-native folder.

The HF-format folder holds `config.json` (model_type `illume_qwen2`, the DualViTok architecture
inlined as `mm_vision_tower.vq_config`, no file paths), `model.safetensors`, the tokenizer files,
`processor_config.json` / image-processor settings and the chat template. With `illume` installed,
`import illume.hf` registers the classes, and `AutoModelForCausalLM.from_pretrained(folder)` /
`AutoProcessor.from_pretrained(folder)` load it without `trust_remote_code`.

Sources:

* origin format (`ILLUME-MLLM/illume_plus-qwen2_5-{3b,7b}`): a `save_pretrained` folder whose
  `vq_config` is an official config name (resolved to the configs shipped in `vision_tokenizer`)
  or a JSON file beside `config.json` (a `.py` there is refused: folders are data), with optional
  `mm_projector.bin` / `trainables.bin` files that override parameters;
* the released remote-code "-hf" layout: only its usage is documented (SPEC-surface D6), so its
  config is read without its `auto_map`, flat or nested (`text_config` / `vision_config`), its
  weights from `.bin` (weights only) or safetensors files, sharded or not, and accepted when every
  key maps onto the origin layout through `REMOTE_KEY_PREFIXES`; anything else is reported by name.

`--dualvitok-config` is the caller's own DualViTok config (it may be Python: the caller runs it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer
from vision_tokenizer.utils.checkpoint import load_weight_folder
from vision_tokenizer.utils.user_errors import UserError, require_path, run_cli

from illume.hf.processing_illume import IllumeImageProcessor, IllumeProcessor
from illume.model import IllumeQwen2Config, IllumeQwen2ForCausalLM
from illume.model.modeling_illume import placeholder_id_from_files

__all__ = [
    "OVERRIDE_FILES",
    "REMOTE_KEY_PREFIXES",
    "load_origin_model",
    "export_hf",
    "convert_origin",
    "convert_remote_hf",
    "main",
]

# Origin-format extras that carry trained parameters on top of the shards (loaded in this order).
OVERRIDE_FILES = ("mm_projector.bin", "trainables.bin")
# How key prefixes of a remote-code "-hf" checkpoint may differ from the origin layout.
REMOTE_KEY_PREFIXES = (("language_model.model.", "model."), ("language_model.lm_head.", "lm_head."))
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_LOAD_HINTS = ("delay_load", "vq_ckpt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                    "special_tokens_map.json", "added_tokens.json")  # fmt: skip


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json (not a checkpoint folder)")
    return json.loads(path.read_text())


def _inlined_config(values: Mapping[str, Any], folder: Path, dualvitok_config: Any) -> IllumeQwen2Config:
    """The checkpoint config with `vq_config` replaced by the DualViTok dict it names.

    The folder's own `vq_config` is resolved like any loader does (official name, or JSON in the
    folder; a Python file there is refused); only the caller's `dualvitok_config` may be a .py.
    """
    values = _flat_config(copy.deepcopy(dict(values)))
    tower = values.get("mm_vision_tower")
    if not isinstance(tower, dict):
        raise ValueError(f"{folder / 'config.json'}: no mm_vision_tower dict; is this an ILLUME+ checkpoint?")
    if dualvitok_config is None and tower.get("vq_config") is None:
        raise ValueError(f"{folder / 'config.json'}: mm_vision_tower has no vq_config; pass dualvitok_config")
    for key in _LOAD_HINTS:
        tower.pop(key, None)
    for key in ("model_type", "auto_map", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        values.pop(key, None)
    values["architectures"] = [IllumeQwen2ForCausalLM.__name__]
    config = IllumeQwen2Config(**values)
    resolved = config.resolve_dualvitok([folder], explicit=dualvitok_config)
    config.mm_vision_tower = {**config.mm_vision_tower, "vq_config": resolved.to_vq_model()}
    if getattr(config, "image_token_id", None) is None:
        config.image_token_id = placeholder_id_from_files(folder)
    return config


def _flat_config(values: dict[str, Any]) -> dict[str, Any]:
    """A nested (`text_config` / `vision_config`) "-hf" config flattened to the origin layout."""
    text = values.pop("text_config", None)
    vision = values.pop("vision_config", None)
    if isinstance(text, Mapping):
        values = {**{k: v for k, v in text.items() if k not in ("model_type", "architectures")}, **values}
    if isinstance(vision, Mapping) and "mm_vision_tower" not in values:
        is_tower = "vq_config" in vision or vision.get("type") == "DualVisionTower"
        values["mm_vision_tower"] = dict(vision) if is_tower else {"type": "DualVisionTower", "vq_config": dict(vision)}
    return values


def _apply_overrides(model: IllumeQwen2ForCausalLM, folder: Path) -> None:
    """Load `mm_projector.bin` / `trainables.bin` (full `model.…` keys) over the shard weights."""
    params = model.state_dict()
    for name in OVERRIDE_FILES:
        path = folder / name
        if not path.is_file():
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)
        unknown = sorted(set(state) - set(params))
        wrong = sorted(k for k in state if k in params and state[k].shape != params[k].shape)
        if unknown or wrong:
            raise ValueError(f"{path}: keys not in the model: {unknown}; mis-shaped keys: {wrong}")
        model.load_state_dict(state, strict=False)


def load_origin_model(
    folder: str | os.PathLike,
    dualvitok_config: Any = None,
    dtype: torch.dtype | None = None,
) -> tuple[IllumeQwen2ForCausalLM, Any]:
    """Model and tokenizer of an origin-format folder, with its DualViTok config inlined.

    `dualvitok_config` (dict, .py or .json) replaces the folder's `vq_config` path, for checkouts
    where that path does not resolve (it is relative to the official repository root).
    """
    folder = Path(folder)
    config = _inlined_config(_read_config(folder), folder, dualvitok_config)
    model = IllumeQwen2ForCausalLM.from_pretrained(folder, config=config, dtype=dtype or torch.float32)
    _apply_overrides(model, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    return model.eval(), tokenizer


def export_hf(model: IllumeQwen2ForCausalLM, tokenizer: Any, out_dir: str | os.PathLike) -> Path:
    """Save `model` + `tokenizer` + processor as an HF-format folder (the config must be inlined)."""
    out = Path(out_dir)
    tower = model.config.mm_vision_tower or {}
    if not isinstance(tower.get("vq_config"), Mapping):
        raise ValueError("export_hf needs mm_vision_tower.vq_config as a dict; load with load_origin_model")
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    image_processor = IllumeImageProcessor.from_model_config(model.config)
    tokenizer.padding_side = model.config.tokenizer_padding_side
    IllumeProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    return out


def convert_origin(
    src: str | os.PathLike, out_dir: str | os.PathLike, dualvitok_config: Any = None, dtype: str | None = None
) -> Path:
    """Origin-format folder → HF-format folder."""
    model, tokenizer = load_origin_model(src, dualvitok_config)
    if dtype is not None:
        model = model.to(_DTYPES[dtype])
    return export_hf(model, tokenizer, out_dir)


def _rename_remote_key(key: str) -> str:
    for old, new in REMOTE_KEY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def convert_remote_hf(
    src: str | os.PathLike, out_dir: str | os.PathLike, dualvitok_config: Any = None, dtype: str | None = None
) -> Path:
    """Remote-code "-hf" folder → HF-format folder (see the module docstring for what is assumed)."""
    folder = Path(src)
    config = _inlined_config(_read_config(folder), folder, dualvitok_config)
    model = IllumeQwen2ForCausalLM(config)
    state = {_rename_remote_key(key): value for key, value in load_weight_folder(folder).items()}
    expected = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in state if k in expected and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{folder}: weights do not map onto the ILLUME+ layout; missing {missing[:20]}, "
            f"unexpected {unexpected[:20]}, mis-shaped {wrong[:20]}"
        )
    model.load_state_dict(state, strict=False)
    if dtype is not None:
        model = model.to(_DTYPES[dtype])
    tokenizer_dir = folder
    if not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder}: no tokenizer files ({', '.join(_TOKENIZER_FILES)})")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, padding_side="left")
    return export_hf(model.eval(), tokenizer, out_dir)


def _is_remote_layout(folder: Path) -> bool:
    return "auto_map" in _read_config(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m illume.hf",
        description="Convert an ILLUME+ checkpoint (origin format or remote-code -hf layout) to the HF format.",
    )
    parser.add_argument("src", type=Path, help="checkpoint folder (config.json, weights, tokenizer)")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument(
        "--dualvitok-config",
        default=None,
        help="DualViTok config (.py/.json) when the folder's vq_config path does not resolve",
    )
    parser.add_argument(
        "--dtype", choices=sorted(_DTYPES), default=None, help="cast the weights before saving"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    return run_cli(parser.prog, lambda _: _convert(parser, args), [])


def _convert(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    require_path(args.src, "src", folder=True)
    if not (args.src / "config.json").is_file():
        raise UserError(f"src {args.src}: no config.json (not a checkpoint folder)")
    if args.out.exists():
        if not args.overwrite:
            parser.error(f"{args.out} exists; pass --overwrite to replace it")
        shutil.rmtree(args.out)
    convert = convert_remote_hf if _is_remote_layout(args.src) else convert_origin
    convert(args.src, args.out, args.dualvitok_config, args.dtype)
    print(f"wrote {args.out}")
    return 0
