"""`dualvitok` command line: thin sub-commands over the DualViTok API, its SDXL decoder and its tools.

    dualvitok reconstruct IMAGES_OR_FOLDER... --config CFG [--checkpoint CKPT] --out DIR
                          [--sdxl-decoder DIR [--sdxl-steps N] [--sdxl-guidance G] [--sdxl-upsample]]
    dualvitok train | evaluate | codebook-inference | train-sdxl-decoder ARGS...

`reconstruct` is implemented here. The other sub-commands hand their arguments unchanged to the
`main(argv)` of the module that owns them, so each keeps a single argument parser and
`dualvitok train ...` behaves exactly like `python -m vision_tokenizer.train ...`.
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

if TYPE_CHECKING:
    from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline

__all__ = ["main", "build_parser", "sdxl_token_size"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_MIN_PIXELS = 32 * 32
DEFAULT_SDXL_STEPS = 20  # as the official reconstruction evaluation and demo
DEFAULT_SDXL_GUIDANCE = 2.0  # as the official reconstruction evaluation


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
        raise SystemExit(f"error: --sdxl-decoder needs the decoder extra ({err}); pip install diffusers") from None
    try:
        pipe = DualViTokSDXLDecoderPipeline.from_pretrained(path, dualvitok=model)
        check_decoder_unet(pipe.unet, pipe.vae.config.latent_channels, code_map_channels(model))
    except (OSError, ValueError) as err:
        where = "" if Path(path).is_dir() else " (no such folder)"
        raise SystemExit(f"error: cannot use the SDXL decoder {path}{where}: {err}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


# ------------------------------------------------------------------------------------- reconstruct


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


def _reconstruct_batch(model, decoder, batch: list[_Item], device: torch.device, dtype: torch.dtype):
    images = torch.cat([item.tensor for item in batch]).to(device)
    with torch.inference_mode(), autocast_context(device, dtype):
        semantic, pixel = model.encode_code(images)
        outputs = decoder(semantic, pixel, tuple(images.shape[-2:]))
    return semantic.cpu().numpy(), pixel.cpu().numpy(), outputs


def _check_reconstruct_args(args: argparse.Namespace) -> None:
    """Reject contradictory flags; fill the defaults that depend on the decoder."""
    if args.use_ema and args.checkpoint is None:
        raise SystemExit("error: --use-ema needs --checkpoint")
    if args.sdxl_decoder is None:
        sdxl_only = {"--sdxl-steps": args.sdxl_steps is not None, "--sdxl-guidance": args.sdxl_guidance is not None,
                     "--sdxl-upsample": args.sdxl_upsample}
        given = [flag for flag, present in sdxl_only.items() if present]
        if given:
            raise SystemExit(f"error: {', '.join(given)} only apply with --sdxl-decoder")
        args.min_pixels = args.min_pixels or DEFAULT_MIN_PIXELS
        args.max_pixels = args.max_pixels or DEFAULT_MAX_PIXELS
    else:
        args.sdxl_steps = args.sdxl_steps or DEFAULT_SDXL_STEPS
        args.sdxl_guidance = DEFAULT_SDXL_GUIDANCE if args.sdxl_guidance is None else args.sdxl_guidance
    if args.min_pixels and args.max_pixels and args.min_pixels > args.max_pixels:
        raise SystemExit(f"error: --min-pixels {args.min_pixels} is larger than --max-pixels {args.max_pixels}")


def run_reconstruct(args: argparse.Namespace) -> int:
    _check_reconstruct_args(args)
    device, dtype = resolve_device(args.device), DTYPES[args.dtype]
    if args.sdxl_decoder is None:
        prepare = _prepare_for_tokenizer(args.min_pixels, args.max_pixels)
    else:
        try:
            _sdxl_sizes_within(args.min_pixels, args.max_pixels)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        prepare = _prepare_for_sdxl(args.min_pixels, args.max_pixels, args.sdxl_upsample)
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
    if args.sdxl_decoder is None:
        decoder = _TokenizerDecoder(model)
    else:
        pipe = load_sdxl_decoder(args.sdxl_decoder, model, device)
        decoder = _SDXLDecoder(pipe, args.sdxl_steps, args.sdxl_guidance, args.sdxl_upsample, args.seed)

    def load_all() -> Iterator[_Item | tuple[Path, str]]:
        for path, name in zip(paths, _unique_names(paths)):
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
        recon_path = out_dir / f"{item.name}.png"
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
        "failed": report.failures,
    }
    if sdxl:
        metrics["sdxl"] = {"decoder": args.sdxl_decoder, "steps": args.sdxl_steps, "guidance": args.sdxl_guidance,
                           "upsample": args.sdxl_upsample, "seed": args.seed}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    summary = f"mean PSNR {mean:.2f} dB over {len(report.results)} image(s)" if mean is not None else "no image reconstructed"
    print(f"{summary}; {len(report.failures)} failed; results in {out_dir}")
    return 1 if report.failures or not report.results else 0


def _add_reconstruct(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "reconstruct",
        help="encode images to DualViTok codes and decode them back (DualViTok or SDXL decoder)",
        description="Tokenize images with DualViTok and decode the codes. For every image, writes "
        "DIR/<name>.png (reconstruction) and DIR/<name>.codes.json|.npz (semantic and pixel index "
        "grids), prints the PSNR against the input resized to the output size and saves all PSNRs "
        "(and their mean) to DIR/metrics.json. Unreadable images are reported and skipped; the exit "
        "code is 1 if any failed. With --sdxl-decoder the codes are decoded by the SDXL diffusion "
        "decoder, which renders only its 12 trained sizes at twice the token resolution: each image is "
        "resized to cover, and centre-cropped to, half the decoder size closest to its aspect ratio "
        "(token sizes HxW: 512x512, 512x384, 384x512, 1024x256, 256x1024, 960x320, 320x960, 768x384, "
        "384x768, 576x384, 384x576, 256x256).",
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
    parser.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                        help=f"largest model input area: bigger images are downscaled, aspect kept, sides "
                        f"multiples of 16 (default {DEFAULT_MAX_PIXELS} = 512x512). With --sdxl-decoder: "
                        "only token sizes of at most N pixels are used (default: all)")
    parser.add_argument("--min-pixels", type=positive_int, default=None, metavar="N",
                        help=f"smallest model input area: smaller images are upscaled (default {DEFAULT_MIN_PIXELS}). "
                        "With --sdxl-decoder: only token sizes of at least N pixels are used (default: all)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                        help="images of equal (resized) size are encoded together in batches of up to N "
                        "(default %(default)s)")
    parser.add_argument("--codes-format", choices=["json", "npz"], default="json",
                        help="file format of the code index grids (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the random initialisation used without --checkpoint, and of each "
                        "image's SDXL decoder noise (default %(default)s)")
    sdxl = parser.add_argument_group("SDXL diffusion decoder")
    sdxl.add_argument("--sdxl-decoder", metavar="DIR",
                      help="decode with the SDXL decoder in this diffusers folder (model_index.json, unet/, "
                      "vae/, scheduler/; e.g. dualvitok-sdxl-decoder) instead of DualViTok's pixel decoder; "
                      "needs diffusers. The output is resized back to the token size unless --sdxl-upsample; "
                      "PSNR compares it with the input resized to the output size")
    sdxl.add_argument("--sdxl-steps", type=positive_int, default=None, metavar="N",
                      help=f"denoising steps (default {DEFAULT_SDXL_STEPS})")
    sdxl.add_argument("--sdxl-guidance", type=float, default=None, metavar="G",
                      help=f"classifier-free guidance scale against an all-zero code map; 1 or less turns it "
                      f"off (default {DEFAULT_SDXL_GUIDANCE})")
    sdxl.add_argument("--sdxl-upsample", action="store_true",
                      help="keep the decoder output at twice the token size (2x super-resolution)")
    parser.set_defaults(handler=run_reconstruct)


# ------------------------------------------------------------------------- forwarded sub-commands


@dataclass(frozen=True)
class _Forwarded:
    """A sub-command whose arguments go unchanged to `<module>.main(argv)`."""

    name: str
    module: str
    summary: str


_FORWARDED = (
    _Forwarded("train", "vision_tokenizer.train",
               "train or fine-tune DualViTok: CONFIG [--resume] [--a.b=value ...] (torchrun for several processes)"),
    _Forwarded("evaluate", "vision_tokenizer.evaluate",
               "reconstruct a validation set: PSNR, SSIM, rFID, codebook usage (CONFIG --vq-ckpt CKPT ...)"),
    _Forwarded("codebook-inference", "vision_tokenizer.codebook_inference",
               "add DualViTok code grids to MLLM annotation files (--model_config ... --data_config ...)"),
    _Forwarded("train-sdxl-decoder", "vision_tokenizer.sdxl.train",
               "train the SDXL diffusion decoder on DualViTok codes: CONFIG [--section.key=value ...]"),
)


def _forward(module: str) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        importlib.import_module(module).main(args.args)
        return 0

    return handler


def _add_forwarded(subparsers: argparse._SubParsersAction) -> None:
    for command in _FORWARDED:
        # No option prefixes: every item, --help included, is passed through to the module's own parser.
        parser = subparsers.add_parser(command.name, help=command.summary, add_help=False, prefix_chars="\0")
        parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS")
        parser.set_defaults(handler=_forward(command.module))


# ------------------------------------------------------------------------------------------- entry

_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_reconstruct, _add_forwarded]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualvitok", description="DualViTok image tokenizer tools. `dualvitok COMMAND --help` shows a "
        "command's options.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dualvitok` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
