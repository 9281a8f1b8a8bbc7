"""`dualvitok reconstruct` (also `python -m vision_tokenizer.reconstruct`): images -> codes -> images.

Encodes image files with DualViTok, decodes the codes with DualViTok's pixel decoder or the SDXL
diffusion decoder, and writes per input `<file name>.recon.png`, `<file name>.codes.json|npz` and
a row of `metrics.json` (PSNR against the input resized to the output size). Output names keep
the input's extension (`a.jpg` -> `a.jpg.recon.png`), so they are unique per input and can never
be an input's path, even with `--out` equal to an input folder. Files a folder holds that are not
images (or are broken links) are listed as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vision_tokenizer.data.image_io import ImageLoadError, image_to_tensor, load_image, psnr, tensor_to_image
from vision_tokenizer.data.transforms import cover_resize_center_crop
from vision_tokenizer.job_args import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    DEFAULT_SDXL_GUIDANCE,
    DEFAULT_SDXL_STEPS,
    reconstruct_parser,
)
from vision_tokenizer.runtime.distributed import DTYPES
from vision_tokenizer.utils.user_errors import UserError, run_cli

if TYPE_CHECKING:
    from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline

__all__ = ["main", "run_reconstruct", "sdxl_token_size", "collect_images", "output_names", "RECON_SUFFIX"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
RECON_SUFFIX = ".recon.png"
CODES_SUFFIXES = (".codes.json", ".codes.npz")
METRICS_FILE = "metrics.json"


# ----------------------------------------------------------------------------------- shared helpers


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then Ascend NPU (if torch_npu is installed), then CPU."""
    has_npu = importlib.util.find_spec("torch_npu") is not None
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        name = "npu" if has_npu else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here (choices: auto, cpu, cuda, npu)")
    if name == "npu":
        if not has_npu:
            raise UserError("--device npu needs the torch_npu package (pip install torch_npu)")
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


def _is_own_output(path: Path, out_dir: Path | None) -> bool:
    """A file this command writes into `out_dir` (skipped silently, so a rerun does not eat its results)."""
    if out_dir is None or path.parent.resolve() != out_dir:
        return False
    return path.name == METRICS_FILE or path.name.endswith((RECON_SUFFIX, *CODES_SUFFIXES))


def _skip_reason(path: Path) -> str | None:
    """Why a file found in a folder is not reconstructed (None: it is an image file to load)."""
    if path.is_symlink() and not path.exists():
        return "broken or looping symbolic link"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        kind = f"'{path.suffix}'" if path.suffix else "without an extension"
        return f"unsupported file type {kind} (supported: {', '.join(sorted(IMAGE_SUFFIXES))})"
    if not path.is_file():
        return "not a regular file"
    return None


@dataclass
class Collected:
    """Inputs after folder expansion: images to load, inputs that failed, files skipped (with reasons)."""

    images: list[Path] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def collect_images(inputs: Iterable[str], out_dir: Path | None = None) -> Collected:
    """Expand folders (recursively, sorted); report missing inputs and every file a folder holds that is skipped."""
    own = out_dir.resolve() if out_dir is not None else None
    found = Collected()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            images = []
            for candidate in sorted(path.rglob("*")):
                if candidate.is_dir() or _is_own_output(candidate, own):
                    continue
                reason = _skip_reason(candidate)
                if reason is None:
                    images.append(candidate)
                else:
                    found.skipped[str(candidate)] = reason
            if not images:
                found.missing[item] = "folder contains no image files"
            found.images.extend(images)
        elif path.exists():
            found.images.append(path)
        elif path.is_symlink():
            found.missing[item] = "broken or looping symbolic link"
        else:
            found.missing[item] = "file not found"
    return found


def output_names(paths: Sequence[Path]) -> list[str]:
    """One distinct output base name per input: its file name (extension kept), `stem_2.ext` ... on clashes.

    The counter never produces a name another input already has, so no two inputs share outputs.
    """
    taken: set[str] = set()
    names: list[str] = []
    first = {path.name for path in paths}
    for path in paths:
        name, count = path.name, 1
        while name in taken or (count > 1 and name in first):
            count += 1
            name = f"{path.stem}_{count}{path.suffix}"
        taken.add(name)
        names.append(name)
    return names


def _refuse_overwriting_inputs(out_dir: Path, paths: Sequence[Path], names: Sequence[str], codes_format: str) -> None:
    """Outputs end in .recon.png / .codes.*; still, never write over a file given as an input."""
    inputs = {path.resolve() for path in paths}
    planned = [out_dir / METRICS_FILE]
    for name in names:
        planned += [out_dir / f"{name}{RECON_SUFFIX}", out_dir / f"{name}.codes.{codes_format}"]
    clashes = sorted(str(path) for path in planned if path.resolve() in inputs)
    if clashes:
        raise UserError(f"--out {out_dir}: writing there would overwrite the input(s) {', '.join(clashes)}; "
                        "choose another output folder")


# ------------------------------------------------------------------------------ input preparation


@dataclass
class _Item:
    """One loaded image waiting for its batch."""

    path: Path
    name: str
    original_size: tuple[int, int]
    tensor: torch.Tensor  # [1, 3, H, W] in [-1, 1]: what the tokenizer encodes
    reference: Image.Image  # the input at the output size: what the PSNR compares the output with


def _prepare_for_tokenizer(min_pixels: int, max_pixels: int) -> Callable[[Image.Image], tuple[torch.Tensor, Image.Image]]:
    """DualViTok decoding: smart-resize within the pixel budget; the output has the input's size."""

    def prepare(img: Image.Image) -> tuple[torch.Tensor, Image.Image]:
        tensor = image_to_tensor(img, min_pixels=min_pixels, max_pixels=max_pixels)
        return tensor, tensor_to_image(tensor)

    return prepare


def _sdxl_sizes_within(min_pixels: int | None, max_pixels: int | None) -> list[tuple[int, int]]:
    """Decoder sizes (W, H) whose token size (half of it) has an area within the bounds; never empty."""
    from vision_tokenizer.sdxl.resolutions import DECODER_SIZES

    low, high = min_pixels or 0, max_pixels or math.inf
    allowed = [(w, h) for w, h in DECODER_SIZES if low <= (w // 2) * (h // 2) <= high]
    if not allowed:
        sizes = ", ".join(f"{h // 2}x{w // 2}" for w, h in DECODER_SIZES)
        bounds = " and ".join(f"{flag} {value}" for flag, value in (("--min-pixels", min_pixels),
                                                                   ("--max-pixels", max_pixels)) if value)
        raise ValueError(
            f"no SDXL decoder token size fits {bounds}; the decoder renders twice these token sizes "
            f"(height x width, area = height * width): {sizes}"
        )
    return allowed


def sdxl_token_size(height: int, width: int, min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    """Tokenizer input (H, W) for an image decoded by the SDXL decoder: half of one of its 12 sizes.

    The decoder renders only its trained sizes, at twice the token resolution, so the image is
    tokenized at half the decoder size with the closest aspect ratio (for 1:1, 512x512 tokens when
    the image is that large, else 256x256). `min_pixels` / `max_pixels` bound the token area; a
    ValueError lists the token sizes when none is left.
    """
    from vision_tokenizer.sdxl.resolutions import nearest_decoder_size

    decoder_w, decoder_h = nearest_decoder_size(2 * height, 2 * width, _sdxl_sizes_within(min_pixels, max_pixels))
    return decoder_h // 2, decoder_w // 2


def _prepare_for_sdxl(
    min_pixels: int | None, max_pixels: int | None, upsample: bool
) -> Callable[[Image.Image], tuple[torch.Tensor, Image.Image]]:
    """SDXL decoding: cover-resize and centre-crop to the token size; the reference at the output size."""

    def prepare(img: Image.Image) -> tuple[torch.Tensor, Image.Image]:
        height, width = sdxl_token_size(img.height, img.width, min_pixels, max_pixels)
        tokens_input = cover_resize_center_crop(img, height, width)
        tensor = image_to_tensor(tokens_input, min_pixels=height * width, max_pixels=height * width)
        reference = cover_resize_center_crop(img, 2 * height, 2 * width) if upsample else tokens_input
        return tensor, reference

    return prepare


# ------------------------------------------------------------------------------------------ decoders


@dataclass
class _TokenizerDecoder:
    """Codes -> images with DualViTok's own pixel decoder (output size = input size)."""

    model: torch.nn.Module

    def __call__(self, semantic: torch.Tensor, pixel: torch.Tensor, size: tuple[int, int]) -> list[Image.Image]:
        decoded = self.model.decode_code(semantic, pixel).float().cpu()
        return [tensor_to_image(image) for image in decoded]


@dataclass
class _SDXLDecoder:
    """Codes -> images with the SDXL decoder at twice the token size, optionally resized back.

    Every image gets its own generator seeded with `seed`, so its noise (and result) does not
    depend on which other images share its batch.
    """

    pipe: DualViTokSDXLDecoderPipeline
    steps: int
    guidance: float
    upsample: bool
    seed: int

    def __call__(self, semantic: torch.Tensor, pixel: torch.Tensor, size: tuple[int, int]) -> list[Image.Image]:
        height, width = size
        generators = [torch.Generator().manual_seed(self.seed) for _ in range(semantic.shape[0])]
        images = self.pipe(
            vq_indices=(semantic, pixel), height=2 * height, width=2 * width, num_inference_steps=self.steps,
            guidance_scale=self.guidance, generator=generators,
        ).images
        if self.upsample:
            return images
        return [image.resize((width, height), Image.Resampling.BICUBIC) for image in images]


def load_sdxl_decoder(path: str, model: torch.nn.Module, device: torch.device) -> DualViTokSDXLDecoderPipeline:
    """The decoder pipeline around `model`, checked against its code-map width before any image runs."""
    try:
        from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline
        from vision_tokenizer.sdxl.conditioning import check_decoder_unet, code_map_channels
    except ImportError as err:
        raise UserError(f"--sdxl-decoder needs the decoder extra ({err}); pip install diffusers") from None
    try:
        pipe = DualViTokSDXLDecoderPipeline.from_pretrained(path, dualvitok=model)
        check_decoder_unet(pipe.unet, pipe.vae.config.latent_channels, code_map_channels(model))
    except (OSError, ValueError) as err:
        where = "" if Path(path).is_dir() else " (no such folder)"
        raise UserError(f"cannot use the SDXL decoder {path}{where}: {err}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ------------------------------------------------------------------------------------- reconstruct


@dataclass
class _Report:
    results: dict[str, dict] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


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


def _reconstruct_batch(model, decoder, batch: list[_Item], device: torch.device, dtype: torch.dtype):
    images = torch.cat([item.tensor for item in batch]).to(device)
    with torch.inference_mode(), autocast_context(device, dtype):
        semantic, pixel = model.encode_code(images)
        outputs = decoder(semantic, pixel, tuple(images.shape[-2:]))
    return semantic.cpu().numpy(), pixel.cpu().numpy(), outputs


def _check_reconstruct_args(args: argparse.Namespace) -> None:
    """Reject contradictory flags; fill the defaults that depend on the decoder."""
    if args.use_ema and args.checkpoint is None:
        raise UserError("--use-ema needs --dualvitok (a checkpoint)")
    if args.sdxl_decoder is None:
        sdxl_only = {"--sdxl-steps": args.sdxl_steps is not None, "--sdxl-guidance": args.sdxl_guidance is not None,
                     "--sdxl-upsample": args.sdxl_upsample}
        given = [flag for flag, present in sdxl_only.items() if present]
        if given:
            raise UserError(f"{', '.join(given)} only apply with --sdxl-decoder")
        args.min_pixels = args.min_pixels or DEFAULT_MIN_PIXELS
        args.max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    else:
        args.sdxl_steps = args.sdxl_steps or DEFAULT_SDXL_STEPS
        args.sdxl_guidance = DEFAULT_SDXL_GUIDANCE if args.sdxl_guidance is None else args.sdxl_guidance
    if args.min_pixels and args.max_pixels and args.min_pixels > args.max_pixels:
        raise UserError(f"--min-pixels {args.min_pixels} is larger than --max-pixels {args.max_pixels}")


def run_reconstruct(args: argparse.Namespace) -> int:
    _check_reconstruct_args(args)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    if args.sdxl_decoder is None:
        prepare = _prepare_for_tokenizer(args.min_pixels, args.max_pixels)
    else:
        try:
            _sdxl_sizes_within(args.min_pixels, args.max_pixels)
        except ValueError as err:
            raise UserError(str(err)) from None
        prepare = _prepare_for_sdxl(args.min_pixels, args.max_pixels, args.sdxl_upsample)
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: is a file; give a folder")
    collected = collect_images(args.inputs, out_dir=out_dir)
    paths, names = collected.images, output_names(collected.images)
    _refuse_overwriting_inputs(out_dir, paths, names, args.codes_format)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _Report(failures=dict(collected.missing), skipped=dict(collected.skipped))
    for item, reason in collected.missing.items():
        tqdm.write(f"error: {item}: {reason}", file=sys.stderr)
    for item, reason in collected.skipped.items():
        tqdm.write(f"skipped: {item}: {reason}", file=sys.stderr)

    try:
        model = load_model(args.config, args.checkpoint, args.use_ema, args.seed).to(device)
    except (OSError, ValueError) as err:  # unreadable config/checkpoint, or a checkpoint of another model
        raise UserError(f"cannot build the model: {err}") from None
    if args.checkpoint is None:
        tqdm.write(f"WARNING: no --dualvitok checkpoint given: the model is randomly initialised from {args.config} "
                   f"(seed {args.seed}); reconstructions and codes are not meaningful.", file=sys.stderr)
    if args.sdxl_decoder is None:
        decoder = _TokenizerDecoder(model)
    else:
        pipe = load_sdxl_decoder(args.sdxl_decoder, model, device)
        decoder = _SDXLDecoder(pipe, args.sdxl_steps, args.sdxl_guidance, args.sdxl_upsample, args.seed)

    def load_all() -> Iterator[_Item | tuple[Path, str]]:
        for path, name in zip(paths, names):
            try:
                img = load_image(path)
            except ImageLoadError as err:
                yield path, err.reason
                continue
            tensor, reference = prepare(img)
            yield _Item(path, name, (img.height, img.width), tensor, reference)

    with tqdm(total=len(paths), desc="reconstruct", unit="img", file=sys.stderr) as bar:
        for batch in _batches(load_all(), args.batch_size):
            if isinstance(batch, tuple):
                path, reason = batch
                report.failures[str(path)] = reason
                tqdm.write(f"error: {path}: {reason}", file=sys.stderr)
                bar.update(1)
                continue
            _process_batch(model, decoder, batch, device, dtype, out_dir, args.codes_format, report)
            bar.update(len(batch))

    return _finish(report, out_dir, args)


def _process_batch(model, decoder, batch: list[_Item], device, dtype, out_dir: Path, codes_format: str,
                   report: _Report) -> None:
    try:
        semantic, pixel, outputs = _reconstruct_batch(model, decoder, batch, device, dtype)
    except torch.OutOfMemoryError:
        height, width = batch[0].tensor.shape[-2:]
        for item in batch:
            report.failures[str(item.path)] = f"out of memory at {height}x{width} (try a smaller --max-pixels)"
            tqdm.write(f"error: {item.path}: {report.failures[str(item.path)]}", file=sys.stderr)
        return
    for i, item in enumerate(batch):
        recon = outputs[i]
        recon_path = out_dir / f"{item.name}{RECON_SUFFIX}"
        recon.save(recon_path)
        codes_path = _save_codes(out_dir, item, semantic[i], pixel[i], codes_format)
        value = psnr(item.reference, recon)
        report.results[item.name] = {
            "image": str(item.path), "original_size": list(item.original_size),
            "size": list(item.tensor.shape[-2:]), "output_size": [recon.height, recon.width],
            "semantic_grid": list(semantic[i].shape), "pixel_grid": list(pixel[i].shape),
            "psnr": value if math.isfinite(value) else None,
            "reconstruction": recon_path.name, "codes": codes_path.name,
        }
        height, width = item.tensor.shape[-2:]
        tqdm.write(f"{item.path}: {height}x{width} -> {recon.height}x{recon.width}, PSNR {value:.2f} dB")


def _finish(report: _Report, out_dir: Path, args: argparse.Namespace) -> int:
    values = [r["psnr"] for r in report.results.values() if r["psnr"] is not None]
    mean = float(np.mean(values)) if values else None
    sdxl = args.sdxl_decoder is not None
    metrics = {
        "config": args.config, "checkpoint": args.checkpoint, "use_ema": args.use_ema, "dtype": args.dtype,
        "min_pixels": args.min_pixels, "max_pixels": args.max_pixels,
        "decoder": "sdxl" if sdxl else "dualvitok",
        "psnr_reference": "input resized (cover + centre crop) to the output size" if sdxl else "resized input",
        "mean_psnr": mean, "num_images": len(report.results), "images": report.results,
        "failed": report.failures, "skipped": report.skipped,
    }
    if sdxl:
        metrics["sdxl"] = {"decoder": args.sdxl_decoder, "steps": args.sdxl_steps, "guidance": args.sdxl_guidance,
                           "upsample": args.sdxl_upsample, "seed": args.seed}
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    summary = f"mean PSNR {mean:.2f} dB over {len(report.results)} image(s)" if mean is not None else "no image reconstructed"
    print(f"{summary}; {len(report.failures)} failed; {len(report.skipped)} skipped; results in {out_dir}")
    return 1 if report.failures or not report.results else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vision_tokenizer.reconstruct ...`; returns the exit code (1 if any input failed)."""
    return run_reconstruct(reconstruct_parser().parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(run_cli("python -m vision_tokenizer.reconstruct", main))
