"""`illume eval <suite>`: the paper's benchmarks from their own input files.

`configure` / `run` have the shape of the illume CLI's subcommand table; this module only builds
argparse flags, and each suite's module (with torch and the model) is imported when it runs, so
`illume --help` stays instant. Many GPUs: `torchrun --nproc_per_node N -m illume.eval.command
<suite> ...` (the same flags as `illume eval <suite>`); ranks split the items and a restart skips
finished ones.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["NAME", "HELP", "SUITES", "configure", "run", "main"]

NAME = "eval"
HELP = "benchmarks: GenEval, DPG-Bench, MJHQ-30k FID, GEdit-Bench, ImgEdit, understanding (lmms-eval)"

# suite -> (module:function that runs it, one-line help)
SUITES = {
    "geneval": (
        "illume.eval.suites.geneval:run",
        "GenEval evaluation_metadata.jsonl -> <index>/samples/<k>.png",
    ),
    "dpg": ("illume.eval.suites.dpg:run", "DPG-Bench prompts/*.txt -> images/<item_id>.png (2x2 grids)"),
    "mjhq-fid": (
        "illume.eval.suites.mjhq:run",
        "MJHQ-30k meta_data.json -> images/<category>/<id>.png + FID",
    ),
    "fid": ("illume.eval.suites.fid:run", "FID between two image folders"),
    "gedit": (
        "illume.eval.suites.editing:run_gedit",
        "GEdit-Bench -> fullset/<task_type>/<language>/<key>.png",
    ),
    "imgedit": ("illume.eval.suites.editing:run_imgedit", "ImgEdit basic_edit.json -> images/<key>.png"),
    "understanding": ("illume.eval.suites.understanding:run_understanding", "lmms-eval on the paper's suite"),
    "table": ("illume.eval.suites.understanding:run_table", "scores beside the paper's ILLUME+ 3B numbers"),
}

# The paper's sampling (official generation_eval / inference scripts, formats.md §5).
T2I_DEFAULTS = dict(cfg=2.0, t=1.0, k=2048, p=1.0)
EDIT_DEFAULTS = dict(cfg=1.25, t=0.7, k=512, p=0.8)


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX*](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 512x512), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _sizes(text: str) -> list[tuple[int, int]]:
    return [_size(part) for part in text.split(",") if part.strip()]


def _add_model(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", required=True, help="MLLM checkpoint folder")
    group.add_argument("--dualvitok", required=True, help="DualViTok checkpoint (file or folder)")
    group.add_argument("--dualvitok-config", help="DualViTok config if none sits beside the checkpoint")
    group.add_argument("--sdxl-decoder", help="SDXL decoder folder (for --decoder sdxl)")
    group.add_argument("--device", help="torch device (default: this rank's GPU, else CPU)")
    group.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    group.add_argument("--no-cuda-graphs", action="store_true", help="decode eagerly even on CUDA")
    group.add_argument(
        "--speculative", choices=("none", "jacobi"), default="jacobi",
        help="jacobi: exact speculative Jacobi decoding, fewer forward passes (default)",
    )  # fmt: skip
    group.add_argument(
        "--quantize", choices=("none", "int8", "fp8"), default="none",
        help="weight-only LLM quantization (torchao; 'quantize' extra)",
    )  # fmt: skip
    group.add_argument("--offload", action="store_true", help="keep DualViTok/SDXL on the CPU between uses")


def _add_run(
    parser: argparse.ArgumentParser, defaults: dict[str, float], resolution: tuple[int, int] | None
) -> None:
    group = parser.add_argument_group("run")
    group.add_argument("--output-dir", type=Path, required=True, help="where the scorer-ready outputs go")
    group.add_argument("--limit", type=int, help="only the first N items (smoke run)")
    group.add_argument("--batch-size", type=int, default=8, help="rows per pipeline call (default 8)")
    group.add_argument("--seed", type=int, default=42, help="base seed (default 42)")
    size_help = (
        f"image HxW (default {resolution[0]}x{resolution[1]})"
        if resolution
        else "working HxW for every input (default: each input's closest anchor)"
    )
    group.add_argument("--resolution", type=_size, default=resolution, help=size_help)
    sampling = parser.add_argument_group("sampling (the paper's defaults)")
    sampling.add_argument(
        "--cfg-scale", type=float, default=defaults["cfg"], help=f"LLM CFG (default {defaults['cfg']})"
    )
    sampling.add_argument("--temperature", type=float, default=defaults["t"], help=f"default {defaults['t']}")
    sampling.add_argument(
        "--top-k", type=int, default=int(defaults["k"]), help=f"default {int(defaults['k'])}"
    )
    sampling.add_argument("--top-p", type=float, default=defaults["p"], help=f"default {defaults['p']}")
    sampling.add_argument(
        "--official-double-sampling",
        action="store_true",
        help="reproduce the official scripts' second T/top-k/top-p",
    )
    sampling.add_argument("--decoder", choices=("dualvitok", "sdxl"), default="dualvitok")
    sampling.add_argument(
        "--diffusion-cfg-scale", type=float, default=2.0, help="SDXL guidance (default 2.0)"
    )
    sampling.add_argument("--diffusion-steps", type=int, default=50, help="SDXL steps (default 50)")


def _add_features(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--features", default="inception", help="feature extractor (default: FID Inception-v3)"
    )
    parser.add_argument(
        "--inception-weights", help="local weights-inception-2015-12-05-6726825d.pth (torch-fidelity)"
    )


def _configure_suite(name: str, parser: argparse.ArgumentParser) -> None:
    if name == "geneval":
        parser.add_argument(
            "--metadata", type=Path, required=True, help="GenEval prompts/evaluation_metadata.jsonl"
        )
        parser.add_argument("--samples", type=int, default=4, help="images per prompt (default 4)")
    elif name == "dpg":
        parser.add_argument("--prompts", type=Path, required=True, help="ELLA dpg_bench/prompts folder")
        parser.add_argument("--samples", type=int, default=4, help="images per prompt grid, 1-4 (default 4)")
    elif name == "mjhq-fid":
        parser.add_argument("--meta", type=Path, required=True, help="MJHQ-30K meta_data.json")
        parser.add_argument(
            "--reference-dir", type=Path, help="MJHQ-30K mjhq30k_imgs folder (<category>/<id>.jpg)"
        )
        parser.add_argument("--fid-batch-size", type=int, default=32)
        _add_features(parser)
    elif name == "gedit":
        parser.add_argument("--data", type=Path, required=True, help="local stepfun-ai/GEdit-Bench download")
        parser.add_argument("--image-column", default="input_image_raw", help="input image column")
        parser.add_argument("--language", choices=("en", "cn", "all"), default="all")
    elif name == "imgedit":
        parser.add_argument(
            "--edit-json", type=Path, required=True, help="ImgEdit Benchmark/Basic/basic_edit.json"
        )
        parser.add_argument("--image-root", type=Path, required=True, help="folder of the original images")
    if name in ("geneval", "dpg", "mjhq-fid"):
        _add_model(parser)
        _add_run(parser, T2I_DEFAULTS, (512, 512))
    elif name in ("gedit", "imgedit"):
        _add_model(parser)
        _add_run(parser, EDIT_DEFAULTS, None)
        parser.add_argument(
            "--anchors",
            type=_sizes,
            default=None,
            help="comma list of HxW anchors (default: the 11 official ones)",
        )
    elif name == "fid":
        parser.add_argument("generated", type=Path)
        parser.add_argument("reference", type=Path)
        parser.add_argument("--output", type=Path, help="also write the result JSON here")
        parser.add_argument("--device")
        _add_features(parser)
    elif name == "understanding":
        parser.add_argument("--model", required=True, help="MLLM checkpoint folder")
        parser.add_argument("--dualvitok", help="DualViTok checkpoint (not needed to answer questions)")
        parser.add_argument("--dtype", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
        parser.add_argument(
            "--tasks", default="illume_plus_paper", help="lmms-eval tasks or groups (comma list)"
        )
        parser.add_argument("--output-dir", type=Path, required=True)
        parser.add_argument("--batch-size", type=int, default=8)
        parser.add_argument("--limit", type=int, help="only the first N documents per task")
        parser.add_argument("--num-processes", type=int, default=1, help="GPUs (accelerate launch)")
        parser.add_argument("--include-path", type=Path, help="a folder of extra lmms-eval task yamls")
        parser.add_argument("--dry-run", action="store_true", help="print the lmms-eval command only")
    elif name == "table":
        parser.add_argument("--results", type=Path, help="lmms-eval results JSON (or its output folder)")
        parser.add_argument("--geneval-results", type=Path, help="GenEval scorer results.jsonl")
        parser.add_argument("--fid-json", type=Path, help="fid.json of `illume eval mjhq-fid`")
        parser.add_argument("--output", type=Path, help="also write the Markdown table here")


def configure(parser: argparse.ArgumentParser) -> None:
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, (_, text) in SUITES.items():
        sub = suites.add_parser(name, help=text, description=text)
        _configure_suite(name, sub)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "anchors", "unset") is None:
        from illume.vocab import RATIOS

        args.anchors = [tuple(a) for a in RATIOS]
    module, function = SUITES[args.suite][0].split(":")
    return int(getattr(importlib.import_module(module), function)(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    from vision_tokenizer.utils.user_errors import OneLineErrorParser, run_cli

    parser = OneLineErrorParser(prog="illume eval", description=HELP)  # one-line usage errors, as `illume eval`
    configure(parser)
    return run_cli("illume eval", lambda items: run(parser.parse_args(items)), argv)


if __name__ == "__main__":
    sys.exit(main())
