"""The `illume` command: `illume generate`, `illume edit`, `illume chat`, …

Subcommands live in one table, `SUBCOMMANDS`; other parts of the project add theirs with
`register_subcommand` (e.g. training or the quickstart) and appear under `illume --help`.
Heavy imports happen inside the handlers, so `--help` costs well under a second of CPU.
Flags are spelled as everywhere in the project (`--model`, `--dualvitok`, `--dualvitok-config`,
`--sdxl-decoder`, `--batch-size`); the official scripts' spellings are hidden aliases. Input
mistakes (a missing folder, an unsupported resolution, a wrong device) are one line on stderr
and exit status 2; `--debug` or ILLUME_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vision_tokenizer.job_args import add_option
from vision_tokenizer.utils.user_errors import (
    DEBUG_FLAG,
    OneLineErrorParser,
    UserError,
    require_path,
    run_cli,
)

from illume.eval import command as _eval
from illume.quickstart import command as _quickstart

__all__ = ["Subcommand", "SUBCOMMANDS", "register_subcommand", "build_parser", "main"]


@dataclass(frozen=True)
class Subcommand:
    """`configure(parser)` adds the flags; `run(args)` does the work and returns the exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {}


def register_subcommand(command: Subcommand) -> Subcommand:
    if command.name in SUBCOMMANDS:
        raise ValueError(f"illume subcommand {command.name!r} is already registered")
    SUBCOMMANDS[command.name] = command
    return command


# ---------------------------------------------------------------------------------------------
# shared flags
def _resolution(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX*](\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"resolution must look like HxW (e.g. 512x512), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def _add_model_flags(parser: argparse.ArgumentParser, needs_decoder: bool) -> None:
    group = parser.add_argument_group("model")
    add_option(
        group, "--model", "--model_name", "--mllm_path", "--model-path", "--model_path", dest="model",
        required=True, help="MLLM checkpoint folder (config.json, weights, tokenizer)",
    )  # fmt: skip
    add_option(
        group, "--dualvitok", "--tokenizer_checkpoint", "--vq-ckpt", "--vq_ckpt", dest="dualvitok",
        required=needs_decoder, help="DualViTok checkpoint (file or folder) that turns generated codes into pixels",
    )  # fmt: skip
    add_option(
        group, "--dualvitok-config", "--tokenizer_config", "--vq_config", dest="dualvitok_config",
        help="DualViTok config (.py or .json) if none sits beside the checkpoint",
    )  # fmt: skip
    add_option(
        group, "--sdxl-decoder", "--diffusion_decoder_path", dest="sdxl_decoder",
        help="SDXL decoder folder (needed for --decoder sdxl)",
    )  # fmt: skip
    group.add_argument("--adapter", help="LoRA adapter folder of a training run, merged into --model (its base)")
    group.add_argument(
        "--no-generation-config", action="store_true",
        help="ignore the checkpoint's generation_config.json (its repetition penalty and sampling defaults)",
    )  # fmt: skip
    group.add_argument("--device", help="torch device: cpu, cuda, cuda:N, npu (default: cuda if available, else cpu)")
    add_option(
        group,
        "--dtype",
        "--torch_dtype",
        dest="dtype",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="MLLM precision (auto: bf16 on CUDA, fp32 on CPU)",
    )
    add_option(group, "--no-cuda-graphs", "--no_cuda_graphs", dest="no_cuda_graphs", action="store_true",
               help="decode eagerly even on CUDA")
    group.add_argument("--quantize", choices=("none", "int8", "fp8"), default="none",
                       help="weight-only quantization of the LLM layers (torchao; fp8 needs a Hopper/Ada GPU)")
    group.add_argument("--offload", action="store_true",
                       help="keep DualViTok and the SDXL decoder on the CPU except while they decode")
    group.add_argument(
        "--seed", type=int, default=42, help="random seed; image/row i uses seed+i (default 42)"
    )


def _add_image_sampling_flags(parser: argparse.ArgumentParser, defaults: dict[str, float]) -> None:
    group = parser.add_argument_group(
        "sampling (semantic/pixel values default to the text ones; pixel top-k 3x)"
    )
    add_option(group, "--cfg-scale", "--llm_cfg_scale", "--cfg_scale", dest="cfg_scale", type=float,
               default=defaults["cfg"], help=f"LLM CFG scale (default {defaults['cfg']})")
    group.add_argument("--temperature", type=float, default=defaults["t"], help=f"default {defaults['t']}")
    add_option(group, "--top-k", "--top_k", dest="top_k", type=int, default=int(defaults["k"]),
               help=f"default {int(defaults['k'])}")
    add_option(group, "--top-p", "--top_p", dest="top_p", type=float, default=defaults["p"],
               help=f"default {defaults['p']}")
    for level in ("semantic", "pixel"):
        group.add_argument(f"--{level}-temperature", type=float)
        group.add_argument(f"--{level}-top-k", type=int)
        group.add_argument(f"--{level}-top-p", type=float)
    group.add_argument(
        "--official-double-sampling",
        action="store_true",
        help="reproduce the official scripts' second application of temperature/top-k/top-p",
    )
    add_option(group, "--batch-size", "--batch_size", dest="batch_size", type=int, default=8,
               help="rows decoded together (default 8)")
    group.add_argument("--speculative", choices=("none", "jacobi"), default="jacobi",
                       help="jacobi: exact speculative Jacobi decoding, fewer forward passes (default)")
    out = parser.add_argument_group("decoding to pixels")
    out.add_argument("--decoder", choices=("dualvitok", "sdxl"), default="dualvitok")
    add_option(out, "--diffusion-cfg-scale", "--diffusion_cfg_scale", dest="diffusion_cfg_scale", type=float,
               default=1.5, help="SDXL guidance (default 1.5)")
    add_option(out, "--diffusion-steps", "--diffusion_steps", dest="diffusion_steps", type=int, default=50,
               help="SDXL denoising steps (default 50)")
    add_option(out, "--output-dir", "--output_dir", dest="output_dir", type=Path, default=Path("outputs"),
               help="where PNGs are written")


def _check_image_settings(args: argparse.Namespace) -> None:
    """Refuse unsupported settings before the model loads (the pipeline checks them again)."""
    from illume.inference.validation import (
        check_count,
        check_resolution,
        check_sampling,
        supported_resolutions,
    )

    if args.resolution is not None:
        check_resolution(args.resolution, supported_resolutions(), "--resolution")
    levels = {
        f"{level}_{name}": getattr(args, f"{level}_{name}")
        for level in ("semantic", "pixel")
        for name in ("temperature", "top_k", "top_p")
    }
    check_sampling(args.temperature, args.top_k, args.top_p, levels, prefix="--")
    check_count(args.batch_size, "--batch-size")


def _sampling_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = dict(
        cfg_scale=args.cfg_scale,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        batch_size=args.batch_size,
        official_double_sampling=args.official_double_sampling,
        speculative=args.speculative,
    )
    for level in ("semantic", "pixel"):
        for name in ("temperature", "top_k", "top_p"):
            value = getattr(args, f"{level}_{name}")
            if value is not None:
                options[f"{level}_{name}"] = value
    return options


def _check_device(name: str | None) -> None:
    """A device torch knows and this machine has; one line otherwise."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, npu)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here (use --device cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def _check_model_paths(args: argparse.Namespace) -> None:
    """Name the flag of a missing checkpoint instead of a loader traceback."""
    require_path(args.model, "--model", folder=True)
    for flag, value in (("--dualvitok", args.dualvitok), ("--dualvitok-config", args.dualvitok_config)):
        if value is not None:
            require_path(value, flag)
    if args.sdxl_decoder is not None:
        require_path(args.sdxl_decoder, "--sdxl-decoder", folder=True)
    if args.adapter is not None:
        require_path(args.adapter, "--adapter", folder=True)
    # --image files: `load_image` names a missing or unreadable one (ImageLoadError is a UserError).


def _load_pipeline(args: argparse.Namespace) -> Any:
    _check_device(args.device)
    from illume.inference import IllumePipeline

    return IllumePipeline.from_pretrained(
        args.model,
        dualvitok=args.dualvitok,
        dualvitok_config=args.dualvitok_config,
        sdxl_decoder=args.sdxl_decoder,
        adapter=args.adapter,
        device=args.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        use_cuda_graphs=False if args.no_cuda_graphs else None,
        quantize=args.quantize,
        offload=args.offload,
        use_generation_config=not args.no_generation_config,
    )


def _slug(text: str, limit: int = 60) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")[:limit]
    return slug or "image"


def _save(images: Sequence[Any], names: Sequence[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (image, name) in enumerate(zip(images, names)):
        path = folder / f"{index:03d}_{_slug(name)}.png"
        image.save(path)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# illume generate
def _configure_generate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", action="append", default=[], help="caption (repeat for several images)")
    parser.add_argument("--prompts-file", type=Path, help="text file with one caption per line")
    parser.add_argument(
        "--resolution", type=_resolution, default=(512, 512), help="output HxW in pixels (default 512x512)"
    )
    parser.add_argument("--num-images", type=int, default=1, help="images per caption (default 1)")
    _add_model_flags(parser, needs_decoder=True)
    _add_image_sampling_flags(parser, dict(cfg=2.0, t=1.0, k=2048, p=1.0))


def _run_generate(args: argparse.Namespace) -> int:
    _check_model_paths(args)  # first: cheap, before torch is imported
    from illume.inference.validation import check_count

    check_count(args.num_images, "--num-images")
    _check_image_settings(args)
    prompts = list(args.prompt)
    if args.prompts_file is not None:
        require_path(args.prompts_file, "--prompts-file", folder=False)
        lines = args.prompts_file.read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError("illume generate: give --prompt TEXT (repeatable) or --prompts-file FILE")
    prompts = [p for p in prompts for _ in range(args.num_images)]
    pipe = _load_pipeline(args)
    images = pipe.generate(
        prompts,
        resolution=args.resolution,
        seed=args.seed,
        decoder=args.decoder,
        diffusion_cfg_scale=args.diffusion_cfg_scale,
        diffusion_steps=args.diffusion_steps,
        progress=True,
        **_sampling_options(args),
    )
    print(f"{pipe.last_forward_passes} forward passes", file=sys.stderr)
    for path in _save(images, prompts, args.output_dir):
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------
# illume edit
def _configure_edit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", action="append", required=True, type=Path, help="input image (repeatable)")
    parser.add_argument(
        "--instruction",
        action="append",
        required=True,
        help="edit instruction: one for all images, or one per image",
    )
    parser.add_argument(
        "--resolution",
        type=_resolution,
        help="working HxW (default: the aspect-ratio anchor closest to each input)",
    )
    parser.add_argument(
        "--keep-padding", action="store_true", help="save the anchor-sized output without un-padding"
    )
    _add_model_flags(parser, needs_decoder=True)
    _add_image_sampling_flags(parser, dict(cfg=1.5, t=0.7, k=512, p=0.8))


def _run_edit(args: argparse.Namespace) -> int:
    _check_model_paths(args)  # first: cheap, before torch is imported
    from vision_tokenizer.data.image_io import load_image

    _check_image_settings(args)
    images = [load_image(path) for path in args.image]
    instructions = args.instruction
    if len(instructions) not in (1, len(images)):
        raise UserError(
            f"illume edit: {len(instructions)} instructions for {len(images)} images (give 1 or one each)"
        )
    pipe = _load_pipeline(args)
    edited = pipe.edit(
        images,
        instructions,
        resolution=args.resolution,
        seed=args.seed,
        decoder=args.decoder,
        diffusion_cfg_scale=args.diffusion_cfg_scale,
        diffusion_steps=args.diffusion_steps,
        unpad=not args.keep_padding,
        progress=True,
        **_sampling_options(args),
    )
    print(f"{pipe.last_forward_passes} forward passes", file=sys.stderr)
    names = [f"{path.stem}_{text}" for path, text in zip(args.image, instructions * len(images))]
    for path in _save(edited, names, args.output_dir):
        print(path)
    return 0


# ---------------------------------------------------------------------------------------------
# illume chat
def _configure_chat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--image", action="append", default=[], type=Path, help="image to talk about (repeatable)"
    )
    parser.add_argument("--question", help="ask once, print the answer and exit (otherwise: interactive)")
    add_option(parser, "--max-new-tokens", "--max_new_tokens", dest="max_new_tokens", type=int, default=512,
               help="answer length limit (default 512)")
    parser.add_argument("--temperature", type=float, default=1.0)
    add_option(parser, "--top-k", "--top_k", dest="top_k", type=int, default=50)
    add_option(parser, "--top-p", "--top_p", dest="top_p", type=float, default=1.0)
    add_option(parser, "--do-sample", "--do_sample", dest="do_sample", action="store_true",
               help="sample instead of greedy decoding")
    parser.add_argument(
        "--allow-images", action="store_true", help="let answers contain generated images (needs --dualvitok)"
    )
    add_option(parser, "--output-dir", "--output_dir", dest="output_dir", type=Path, default=Path("outputs"),
               help="where generated images go")
    _add_model_flags(parser, needs_decoder=False)


def _chat_turn(pipe: Any, args: argparse.Namespace, messages: list, images: list, turn: int) -> str:
    options = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        do_sample=args.do_sample,
        seed=args.seed + turn,
        allow_images=args.allow_images,
    )
    if not args.allow_images:
        answer = ""
        for piece in pipe.stream_chat(messages, images, **options):
            print(piece, end="", flush=True)
            answer += piece
        print()
        return answer
    reply = pipe.chat(messages, images, **options)
    print(reply.text)
    if reply.images:
        pictures = pipe.decode(reply.images)
        for path in _save(pictures, [f"chat_turn{turn}"] * len(pictures), args.output_dir):
            print(f"[image saved to {path}]")
    return reply.text


def _run_chat(args: argparse.Namespace) -> int:
    _check_model_paths(args)  # first: cheap, before torch is imported
    from vision_tokenizer.data.image_io import load_image

    from illume.inference.validation import check_count, check_sampling

    check_sampling(args.temperature, args.top_k, args.top_p, prefix="--")
    check_count(args.max_new_tokens, "--max-new-tokens")
    if args.allow_images and args.dualvitok is None:
        raise UserError("illume chat: --allow-images needs --dualvitok to turn generated codes into pixels")
    pipe = _load_pipeline(args)
    images = [load_image(path) for path in args.image]
    if args.question is not None:
        messages = [("user", args.question, len(images))]
        _chat_turn(pipe, args, messages, images, 0)
        return 0
    print("Interactive chat. Commands: /image PATH (attach), /reset, /exit. Ctrl-D quits.")
    messages: list[tuple[str, str]] = []
    pending = list(images)
    all_images: list[Any] = []
    turn = 0
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return 0
        if line == "/reset":
            messages, pending, all_images = [], [], []
            continue
        if line.startswith("/image "):
            pending.append(load_image(line[len("/image ") :].strip()))
            continue
        messages.append(("user", line, len(pending)))
        all_images += pending
        pending = []
        print("illume> ", end="", flush=True)
        answer = _chat_turn(pipe, args, messages, all_images, turn)
        messages.append(("assistant", answer))
        turn += 1


register_subcommand(
    Subcommand("generate", "text-to-image: captions → PNG files", _configure_generate, _run_generate)
)
register_subcommand(Subcommand("edit", "edit images by instruction → PNG files", _configure_edit, _run_edit))
register_subcommand(
    Subcommand("chat", "ask about images (one-shot --question, or interactive)", _configure_chat, _run_chat)
)


def _configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="MLLM training config (.py), e.g. configs/tiny/illume_debug_tiny.py")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="--a.b=value",
        help="config overrides, e.g. --training_args.max_steps=10; for several processes use "
        "`torchrun --nproc_per_node N ILLUME/illume/train/train.py CONFIG ...` instead",
    )


def _run_train(args: argparse.Namespace) -> int:
    from illume.train.train import main as train_main

    train_main([args.config, *args.overrides])
    return 0


register_subcommand(
    Subcommand(
        "train",
        "train or fine-tune the MLLM in this process (config + overrides)",
        _configure_train,
        _run_train,
    )
)
register_subcommand(Subcommand(_quickstart.NAME, _quickstart.HELP, _quickstart.configure, _quickstart.run))
register_subcommand(Subcommand(_eval.NAME, _eval.HELP, _eval.configure, _eval.run))


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="illume",
        description="ILLUME+: understand, generate and edit images with one multimodal LLM.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument(
        DEBUG_FLAG, action="store_true", help="show the traceback of input errors (also ILLUME_DEBUG=1)"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in SUBCOMMANDS.values():
        sub = commands.add_parser(command.name, help=command.help, description=command.help)
        command.configure(sub)
        sub.set_defaults(_run=command.run)
    return parser


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    return int(args._run(args) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `illume` console script; returns the exit status (2: an input error)."""
    return run_cli("illume", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
