"""Argument parsers of the tokenizer jobs, importable without torch so that every `--help` is instant.

Each job module (`vision_tokenizer.train`, `.evaluate`, `.codebook_inference`, `.sdxl.train`,
`.reconstruct`) builds its parser here; `dualvitok` builds the same parsers under its own program
name (`dualvitok evaluate ...`) to answer `--help` and usage errors before importing the job.

One spelling per concept, dash style, across `illume`, `dualvitok`, the eval scripts and the demos:
`--config` (a tokenizer config for tokenizer jobs), `--dualvitok` (tokenizer weights),
`--dualvitok-config`, `--sdxl-decoder`, `--batch-size`, `--dtype`. The official spellings
(`--vq-ckpt`, `--tokenizer_checkpoint`, `--model_config`, `--batch_size`, ...) are accepted as
hidden aliases (`add_option`), so the official commands keep working.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vision_tokenizer.utils.user_errors import OneLineErrorParser

__all__ = [
    "DTYPE_NAMES",
    "add_option",
    "positive_int",
    "train_parser",
    "evaluate_parser",
    "codebook_inference_parser",
    "sdxl_train_parser",
    "reconstruct_parser",
    "Job",
    "FORWARDED_JOBS",
]

DTYPE_NAMES = ("bf16", "fp16", "fp32")


def add_option(parser: argparse.ArgumentParser | Any, name: str, *aliases: str, **kwargs: Any) -> argparse.Action:
    """`parser.add_argument(name, *aliases, ...)` with the aliases accepted but left out of help and usage.

    argparse looks options up in the parser's table of option strings, while help, usage and error
    messages print `action.option_strings`; narrowing the latter hides the aliases.
    """
    action = parser.add_argument(name, *aliases, **kwargs)
    action.option_strings = [name]
    return action


def positive_int(text: str) -> int:
    """argparse type for counts and pixel budgets."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _process_options(parser: argparse.ArgumentParser) -> None:
    """`--device` and the launcher's `--local-rank`, shared by the jobs that run under torchrun."""
    parser.add_argument(
        "--device", default=None, help="force a device (cpu, cuda, npu); default: the accelerator of this machine"
    )
    add_option(parser, "--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
               help=argparse.SUPPRESS)  # passed by some launchers; unused (torchrun sets LOCAL_RANK)


# ------------------------------------------------------------------------------------------ jobs


def train_parser(prog: str = "python -m vision_tokenizer.train") -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=prog,
        description="Train or fine-tune DualViTok. Launch with torchrun for several processes "
        "(CUDA, Ascend NPU or CPU/gloo, picked automatically). Any further --a.b=value item "
        "overrides that config key (value read as a Python literal), e.g. --data_args.global_batch_size=64 "
        "or --epochs=3.",
    )
    parser.add_argument(
        "config",
        help="tokenizer training config (.py), e.g. configs/example/dualvitok/dualvitok_anyres_max512.py",
    )
    parser.add_argument(
        "--resume", nargs="?", const="latest", default=None,
        help="continue a run exactly: 'latest' (default when given without a value) picks the "
        "newest checkpoint in <results_dir>/<type>/checkpoints, or give a checkpoint path",
    )  # fmt: skip
    parser.add_argument(
        "--fresh", action="store_true",
        help="start over instead of resuming the run found in <results_dir>/<type> (the default)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="with --fresh: delete that earlier run's checkpoints and logs"
    )
    add_option(
        parser, "--stop-after-steps", "--stop_after_steps", dest="stop_after_steps", type=int, default=None,
        help="leave after this many optimizer steps of this invocation (the schedule still "
        "spans the whole run; pair with --resume to continue)",
    )  # fmt: skip
    _process_options(parser)
    return parser


def evaluate_parser(prog: str = "python -m vision_tokenizer.evaluate") -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=prog,
        description="Reconstruct the validation set with a DualViTok checkpoint and report PSNR, SSIM, "
        "rFID and codebook usage. Run under torchrun to shard the images over processes.",
    )
    parser.add_argument("config", help="tokenizer config (.py) with vq_model and data_args.val")
    add_option(parser, "--dualvitok", "--vq-ckpt", "--vq_ckpt", "--checkpoint", dest="vq_ckpt", required=True,
               metavar="CKPT", help="DualViTok weights: training .pt, pytorch_model.bin, safetensors, or a folder")
    add_option(parser, "--use-ema", "--use_ema", dest="use_ema", action="store_true",
               help="evaluate the EMA weights stored under 'ema'")
    add_option(parser, "--dtype", "--model-dtype", "--torch_dtype", dest="model_dtype", choices=DTYPE_NAMES,
               default="fp32", help="weights/compute dtype (default fp32)")
    add_option(parser, "--data-path", "--data_path", dest="data_path", default=None,
               help="override data_args.val.data_path")
    parser.add_argument("--out", default=None, help="output folder (default: <sample_dir>/eval)")
    add_option(parser, "--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=None,
               help="images per process (default data_args.per_proc_batch_size)")
    add_option(parser, "--max-images", "--max_images", dest="max_images", type=positive_int, default=None,
               help="evaluate only the first N images")
    add_option(parser, "--num-workers", "--num_workers", dest="num_workers", type=int, default=0,
               help="data loader workers per process")
    parser.add_argument("--no-fid", action="store_true", help="skip rFID / Inception Score (no torch-fidelity needed)")
    parser.add_argument("--inception-weights", default=None, help="local Inception weights file for rFID")
    _process_options(parser)
    return parser


def codebook_inference_parser(prog: str = "python -m vision_tokenizer.codebook_inference") -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=prog,
        description="Add DualViTok code grids to generation/editing annotation files (jsonl after tokenizer). "
        "Run under torchrun to split the records over processes.",
    )
    add_option(parser, "--config", "--model_config", "--dualvitok-config", dest="model_config", required=True,
               metavar="CFG", help="tokenizer config (.py/.json) describing the model")
    add_option(parser, "--dualvitok", "--tokenizer_checkpoint", "--checkpoint", dest="tokenizer_checkpoint",
               required=True, metavar="CKPT", help="DualViTok weights (file or folder)")
    add_option(parser, "--tokenizer-version", "--tokenizer_version", dest="tokenizer_version", default="dualvitok",
               help="sub-folder naming the tokenizer (default dualvitok)")
    add_option(parser, "--output-dirname", "--output_dirname", dest="output_dirname",
               default="jsonl_after_tokenizer", help="output folder below each dataset root")
    add_option(parser, "--data-config", "--data_config", dest="data_config", required=True, metavar="JSON",
               help="meta-data config json (datasets with tokenizer_inference=true are processed)")
    parser.add_argument("--resolution", type=positive_int, default=512,
                        help="side of the square anchor with --resolution-type fixed (default 512)")
    add_option(parser, "--resolution-type", "--resolution_type", dest="resolution_type",
               choices=("fixed", "fixed_anchors"), default="fixed_anchors",
               help="'fixed': one RxR anchor; 'fixed_anchors': the 11 ILLUME+ aspect-ratio anchors")
    add_option(parser, "--crop-percent-thresh", "--crop_percent_thresh", dest="crop_percent_thresh", type=float,
               default=0.2, help="skip (and report) records whose centre crop would discard more than this fraction")
    add_option(parser, "--dtype", "--torch_dtype", dest="torch_dtype", choices=DTYPE_NAMES, default="fp32",
               help="model dtype (default fp32)")
    add_option(parser, "--use-ema", "--use_ema", dest="use_ema", action="store_true",
               help="use the EMA weights of a training checkpoint")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its part files")
    add_option(parser, "--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=8,
               help="images encoded together (equal sizes only)")
    _process_options(parser)
    return parser


def sdxl_train_parser(prog: str = "python -m vision_tokenizer.sdxl") -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=prog,
        description="Train the SDXL diffusion decoder on DualViTok codes. Config overrides: --train.lr=1e-5",
    )
    parser.add_argument("config", help="mmengine .py config with model / data / train / sample sections")
    return parser


DEFAULT_MAX_PIXELS = 512 * 512
DEFAULT_MIN_PIXELS = 32 * 32
DEFAULT_SDXL_STEPS = 20  # as the official reconstruction evaluation and demo
DEFAULT_SDXL_GUIDANCE = 2.0  # as the official reconstruction evaluation
SDXL_TOKEN_SIZES = "512x512, 512x384, 384x512, 1024x256, 256x1024, 960x320, 320x960, 768x384, 384x768, 576x384, 384x576, 256x256"


def reconstruct_parser(prog: str = "python -m vision_tokenizer.reconstruct") -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=prog,
        description="Tokenize images with DualViTok and decode the codes. For every image, writes "
        "DIR/<file name>.recon.png (reconstruction; the input's extension stays in the name, so inputs "
        "that differ only in extension, or an output folder equal to an input folder, never collide) "
        "and DIR/<file name>.codes.json|.npz (semantic and pixel index grids), prints the PSNR against "
        "the input resized to the output size and saves all PSNRs (and their mean) to DIR/metrics.json, "
        "one row per input. Unreadable images and skipped files are reported with the reason; the exit "
        "code is 1 if any failed. With --sdxl-decoder the codes are decoded by the SDXL diffusion "
        "decoder, which renders only its 12 trained sizes at twice the token resolution: each image is "
        "resized to cover, and centre-cropped to, half the decoder size closest to its aspect ratio "
        f"(token sizes HxW: {SDXL_TOKEN_SIZES}).",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDER",
                        help="image files and/or folders (searched recursively for image files)")
    add_option(parser, "--config", "--dualvitok-config", "--model_config", dest="config", required=True,
               metavar="CFG", help="tokenizer config: a Python config with `vq_model` (e.g. "
               "configs/example/dualvitok/dualvitok_anyres_max512.py) or a JSON `vq_model` file")
    add_option(parser, "--dualvitok", "--checkpoint", "--vq-ckpt", "--tokenizer_checkpoint", dest="checkpoint",
               metavar="CKPT", help="DualViTok weights (.bin/.pt/.pth/.safetensors file or folder); without it "
               "the model is randomly initialised from the config (only useful for smoke tests)")
    add_option(parser, "--use-ema", "--use_ema", dest="use_ema", action="store_true",
               help="load the checkpoint's EMA weights ('ema' entry)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    add_option(parser, "--dtype", "--torch_dtype", dest="dtype", choices=DTYPE_NAMES, default="fp32",
               help="compute precision (default %(default)s); bf16/fp16 use autocast, weights stay float32")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "npu"], default="auto",
                        help="where to run (default %(default)s: cuda, else npu, else cpu)")
    add_option(parser, "--max-pixels", "--max_pixels", dest="max_pixels", type=positive_int, default=None,
               metavar="N", help=f"largest model input area: bigger images are downscaled, aspect kept, sides "
               f"multiples of 16 (default {DEFAULT_MAX_PIXELS} = 512x512). With --sdxl-decoder: "
               "only token sizes of at most N pixels are used (default: all)")
    add_option(parser, "--min-pixels", "--min_pixels", dest="min_pixels", type=positive_int, default=None,
               metavar="N", help=f"smallest model input area: smaller images are upscaled (default "
               f"{DEFAULT_MIN_PIXELS}). With --sdxl-decoder: only token sizes of at least N pixels are used "
               "(default: all)")
    add_option(parser, "--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=8,
               metavar="N", help="images of equal (resized) size are encoded together in batches of up to N "
               "(default %(default)s)")
    parser.add_argument("--codes-format", choices=["json", "npz"], default="json",
                        help="file format of the code index grids (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="N",
                        help="seed of the random initialisation used without --dualvitok, and of each "
                        "image's SDXL decoder noise (default %(default)s)")
    sdxl = parser.add_argument_group("SDXL diffusion decoder")
    add_option(sdxl, "--sdxl-decoder", "--diffusion_decoder_path", dest="sdxl_decoder", metavar="DIR",
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
    return parser


# --------------------------------------------------------------------------- forwarded sub-commands


@dataclass(frozen=True)
class Job:
    """A `dualvitok` sub-command whose arguments go unchanged to `<module>.main(argv)`.

    `parser` builds the module's parser under a given program name; `known_args`: the module
    parses with `parse_known_args` (the rest are config overrides).
    """

    name: str
    module: str
    summary: str
    parser: Callable[[str], argparse.ArgumentParser]
    known_args: bool = False


FORWARDED_JOBS = (
    Job("reconstruct", "vision_tokenizer.reconstruct",
        "encode images to DualViTok codes and decode them back (DualViTok or SDXL decoder)",
        reconstruct_parser),
    Job("train", "vision_tokenizer.train",
        "train or fine-tune DualViTok: CONFIG [--resume] [--a.b=value ...] (torchrun for several processes)",
        train_parser, known_args=True),
    Job("evaluate", "vision_tokenizer.evaluate",
        "reconstruct a validation set: PSNR, SSIM, rFID, codebook usage (CONFIG --dualvitok CKPT ...)",
        evaluate_parser),
    Job("codebook-inference", "vision_tokenizer.codebook_inference",
        "add DualViTok code grids to MLLM annotation files (--config ... --dualvitok ... --data-config ...)",
        codebook_inference_parser),
    Job("train-sdxl-decoder", "vision_tokenizer.sdxl.train",
        "train the SDXL diffusion decoder on DualViTok codes: CONFIG [--section.key=value ...]",
        sdxl_train_parser, known_args=True),
)  # fmt: skip
