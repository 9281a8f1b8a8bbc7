"""`dualvitok` command line: thin sub-commands over the DualViTok API and `data.image_io`.

    dualvitok reconstruct IMAGES_OR_FOLDER... --config CFG [--checkpoint CKPT] --out DIR

Each sub-command registers itself in `_SUBCOMMANDS` with a function that adds its arguments and
a handler that returns the process exit code, so later commands (train, evaluate, codebook
inference) slot in next to `reconstruct` without touching the others.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vision_tokenizer.data.image_io import ImageLoadError, image_to_tensor, load_image, psnr, tensor_to_image

__all__ = ["main", "build_parser"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------------- shared helpers


def positive_int(text: str) -> int:
    """argparse type for counts and pixel budgets."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Ascend NPU (if torch_npu is installed), then CPU."""
    has_npu = importlib.util.find_spec("torch_npu") is not None
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        name = "npu" if has_npu else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA device is available")
    if name == "npu":
        if not has_npu:
            raise SystemExit("error: --device npu needs the torch_npu package (pip install torch_npu)")
        importlib.import_module("torch_npu")  # registers the 'npu' device type with torch
    return torch.device(name)


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16/fp16; weights stay float32 (the quantizers compute in float32)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def load_model(config: str, checkpoint: str | None, use_ema: bool, seed: int):
    """Build DualViTok from a config (random init) or load a checkpoint; returns an eval-mode model."""
    from vision_tokenizer.models.dualvitok import DualViTok

    if checkpoint is None:
        torch.manual_seed(seed)
        model = DualViTok.from_config(config)
    else:
        model = DualViTok.from_pretrained(checkpoint, use_ema=use_ema, config=config)
    return model.eval()


def collect_images(inputs: Iterable[str], exclude: Path | None = None) -> tuple[list[Path], dict[str, str]]:
    """Expand folders (recursively, image suffixes only, sorted); report inputs that do not exist.

    Files under `exclude` (the output folder) are skipped so a rerun does not eat its own results.
    """
    skip = exclude.resolve() if exclude is not None else None
    found: list[Path] = []
    missing: dict[str, str] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = sorted(
                p for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                and (skip is None or not p.resolve().is_relative_to(skip))
            )
            if not images:
                missing[item] = "folder contains no image files"
            found.extend(images)
        elif path.exists():
            found.append(path)
        else:
            missing[item] = "file not found"
    return found, missing


# ------------------------------------------------------------------------------------- reconstruct


@dataclass
class _Item:
    """One loaded image waiting for its batch."""

    path: Path
    name: str
    original_size: tuple[int, int]
    tensor: torch.Tensor  # [1, 3, H, W] in [-1, 1]


@dataclass
class _Report:
    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def _unique_names(paths: list[Path]) -> list[str]:
    """Output base names: the file stem, suffixed _2, _3, ... when two inputs share a stem."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        count = seen.get(path.stem, 0) + 1
        seen[path.stem] = count
        names.append(path.stem if count == 1 else f"{path.stem}_{count}")
    return names


def _batches(items: Iterator[_Item | tuple[Path, str]], batch_size: int) -> Iterator[list[_Item] | tuple[Path, str]]:
    """Group equal-size images into batches of up to `batch_size`; pass load failures straight through.

    Streaming: at most one partial batch per distinct size is held in memory.
    """
    pending: dict[tuple[int, int], list[_Item]] = {}
    for item in items:
        if not isinstance(item, _Item):
            yield item
            continue
        bucket = pending.setdefault(tuple(item.tensor.shape[-2:]), [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield pending.pop(tuple(item.tensor.shape[-2:]))
    yield from pending.values()


def _save_codes(out_dir: Path, item: _Item, semantic: np.ndarray, pixel: np.ndarray, fmt: str) -> Path:
    size = list(item.tensor.shape[-2:])
    out = out_dir / f"{item.name}.codes.{fmt}"
    if fmt == "npz":
        np.savez(out, semantic_indices=semantic, pixel_indices=pixel, size=np.array(size),
                 original_size=np.array(item.original_size))
        return out
    record = {"image": str(item.path), "original_size": list(item.original_size), "size": size,
              "semantic_indices": semantic.tolist(), "pixel_indices": pixel.tolist()}
    out.write_text(json.dumps(record))
    return out


def _reconstruct_batch(model, batch: list[_Item], device: torch.device, dtype: torch.dtype):
    images = torch.cat([item.tensor for item in batch]).to(device)
    with torch.inference_mode(), autocast_context(device, dtype):
        semantic, pixel = model.encode_code(images)
        decoded = model.decode_code(semantic, pixel)
    return semantic.cpu().numpy(), pixel.cpu().numpy(), decoded.float().cpu()


def run_reconstruct(args: argparse.Namespace) -> int:
    if args.use_ema and args.checkpoint is None:
        raise SystemExit("error: --use-ema needs --checkpoint")
    if args.min_pixels > args.max_pixels:
        raise SystemExit(f"error: --min-pixels {args.min_pixels} is larger than --max-pixels {args.max_pixels}")
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, report_missing = collect_images(args.inputs, exclude=out_dir)
    report = _Report(failures=dict(report_missing))
    for item, reason in report_missing.items():
        tqdm.write(f"error: {item}: {reason}", file=sys.stderr)

    if args.checkpoint is None:
        tqdm.write(f"WARNING: no --checkpoint given: the model is randomly initialised from {args.config} "
                   f"(seed {args.seed}); reconstructions and codes are not meaningful.", file=sys.stderr)
    try:
        model = load_model(args.config, args.checkpoint, args.use_ema, args.seed).to(device)
    except (OSError, ValueError) as err:  # unreadable config/checkpoint, or a checkpoint of another model
        raise SystemExit(f"error: cannot build the model: {err}") from None

    def load_all() -> Iterator[_Item | tuple[Path, str]]:
        for path, name in zip(paths, _unique_names(paths)):
            try:
                img = load_image(path)
            except ImageLoadError as err:
                yield path, err.reason
                continue
            tensor = image_to_tensor(img, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
            yield _Item(path, name, (img.height, img.width), tensor)

    with tqdm(total=len(paths), desc="reconstruct", unit="img", file=sys.stderr) as bar:
        for batch in _batches(load_all(), args.batch_size):
            if isinstance(batch, tuple):
                path, reason = batch
                report.failures[str(path)] = reason
                tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
                bar.update(1)
                continue
            _process_batch(model, batch, device, dtype, out_dir, args.codes_format, report)
            bar.update(len(batch))

    return _finish(report, out_dir, args)


def _process_batch(model, batch: list[_Item], device, dtype, out_dir: Path, codes_format: str, report: _Report) -> None:
    try:
        semantic, pixel, decoded = _reconstruct_batch(model, batch, device, dtype)
    except torch.OutOfMemoryError:
        height, width = batch[0].tensor.shape[-2:]
        for item in batch:
            report.failures[str(item.path)] = f"out of memory at {height}x{width} (try a smaller --max-pixels)"
            tqdm.write(f"error: {item.path}: {report.failures[str(item.path)]}", file=sys.stderr)
        return
    for i, item in enumerate(batch):
        recon = tensor_to_image(decoded[i])
        recon_path = out_dir / f"{item.name}.png"
        recon.save(recon_path)
        codes_path = _save_codes(out_dir, item, semantic[i], pixel[i], codes_format)
        value = psnr(tensor_to_image(item.tensor), recon)
        report.results[item.name] = {
            "image": str(item.path), "original_size": list(item.original_size),
            "size": list(item.tensor.shape[-2:]), "semantic_grid": list(semantic[i].shape),
            "pixel_grid": list(pixel[i].shape), "psnr": value if math.isfinite(value) else None,
            "reconstruction": recon_path.name, "codes": codes_path.name,
        }
        height, width = item.tensor.shape[-2:]
        tqdm.write(f"{item.path}: {height}x{width}, PSNR {value:.2f} dB")


def _finish(report: _Report, out_dir: Path, args: argparse.Namespace) -> int:
    values = [r["psnr"] for r in report.results.values() if r["psnr"] is not None]
    mean = float(np.mean(values)) if values else None
    metrics = {
        "config": args.config, "checkpoint": args.checkpoint, "use_ema": args.use_ema, "dtype": args.dtype,
        "min_pixels": args.min_pixels, "max_pixels": args.max_pixels, "psnr_reference": "resized input",
        "mean_psnr": mean, "num_images": len(report.results), "images": report.results,
        "failed": report.failures,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    summary = f"mean PSNR {mean:.2f} dB over {len(report.results)} image(s)" if mean is not None else "no image reconstructed"
    print(f"{summary}; {len(report.failures)} failed; results in {out_dir}")
    return 1 if report.failures or not report.results else 0


def _add_reconstruct(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="encode images to DualViTok codes and decode them back",
        description="Tokenize images with DualViTok and decode the codes. For every image, writes "
        "DIR/<name>.png (reconstruction) and DIR/<name>.codes.json|.npz (semantic and pixel index "
        "grids), prints the PSNR against the resized input and saves all PSNRs (and their mean) to "
        "DIR/metrics.json. Unreadable images are reported and skipped; the exit code is 1 if any failed.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER",
                        help="image files and/or folders (searched recursively for image files)")
    parser.add_argument("--config", required=True, metavar="CFG",
                        help="tokenizer config: a Python config with `vq_model` (e.g. "
                        "configs/example/dualvitok/dualvitok_anyres_max512.py) or a JSON `vq_model` file")
    parser.add_argument("--checkpoint", metavar="CKPT",
                        help="weights (.bin/.pt/.pth/.safetensors file or folder); without it the model "
                        "is randomly initialised from the config (only useful for smoke tests)")
    parser.add_argument("--use-ema", action="store_true", help="load the checkpoint's EMA weights ('ema' entry)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="compute precision (default %(default)s); bf16/fp16 use autocast, weights stay float32")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "npu"], default="auto",
                        help="where to run (default %(default)s: cuda, else npu, else cpu)")
    parser.add_argument("--max-pixels", type=positive_int, default=512 * 512, metavar="N",
                        help="largest model input area: bigger images are downscaled, aspect kept, sides "
                        "multiples of 16 (default %(default)s = 512x512)")
    parser.add_argument("--min-pixels", type=positive_int, default=32 * 32, metavar="N",
                        help="smallest model input area: smaller images are upscaled (default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                        help="images of equal (resized) size are encoded together in batches of up to N "
                        "(default %(default)s)")
    parser.add_argument("--codes-format", choices=["json", "npz"], default="json",
                        help="file format of the code index grids (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the random initialisation used without --checkpoint (default %(default)s)")
    parser.set_defaults(handler=run_reconstruct)


# ------------------------------------------------------------------------------------------- entry

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_reconstruct]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualvitok", description="DualViTok image tokenizer tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `dualvitok` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
