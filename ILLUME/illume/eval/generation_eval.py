"""Generation evaluation: text-to-image and editing jsonl files → images + one metadata jsonl per setting.

Like the official `generation_eval/main.py` (SPEC-surface D4), with these differences: inputs are
jsonl paths (not registry names), the decoding is batched with CFG in one forward, a run resumes
where it stopped, and every rank writes its own part file that rank 0 merges at the end.

    torchrun --nproc_per_node 8 -m illume.eval.generation_eval --mllm_path CKPT \\
        --tokenizer_checkpoint DUALVITOK --t2i prompts.jsonl --output_dir out/

Inputs: text-to-image lines `{"conversations": [{"from": "human", "value": "<caption>"}]}`;
editing lines `{"images": ["0.jpg"], "conversations": [{"from": "human", "value": "<image><instruction>."}]}`
with images relative to `--image_dir` (default: `images/` beside the jsonl).

Outputs under `<output_dir>/generation_eval/`, with `name = {dataset}_temperature{T}_topk{K}_topp{P}_cfg{G}`
and `ratio = ratio_h{H}_w{W}`: `{name}_dualvitok/{ratio}/{id}-{text}.png`, optionally
`{name}_diffusion_cfg{D}/{ratio}/...` (SDXL, 2x), and `{name}_{ratio}.jsonl` with `image_embed_inds`
([[level-0 codes], [level-1 codes]]), `output_text` and the item fields.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vision_tokenizer.job_args import add_option
from vision_tokenizer.runtime.distributed import DistContext, init_distributed
from vision_tokenizer.runtime.jsonl import RecordError, read_records
from vision_tokenizer.runtime.sharded_jsonl import ShardedJsonlWriter
from vision_tokenizer.utils.user_errors import OneLineErrorParser, UserError, require_path, run_cli

__all__ = ["EvalItem", "read_t2i_items", "read_edit_items", "out_image_name", "main"]

logger = logging.getLogger(__name__)
PROG = "python -m illume.eval.generation_eval"


class InputImageNotFound(UserError, FileNotFoundError):
    """An editing record names an input image that is not there."""


@dataclass(frozen=True)
class EvalItem:
    id: int
    text: str
    input_image_path: str | None = None

    @property
    def out_image_path(self) -> str:
        return out_image_name(self.id, self.text)


def out_image_name(item_id: int, text: str) -> str:
    """`{id}-{text}.png` with '/' → ' ' and '.' removed, text cut at 200 characters (official naming)."""
    return f"{item_id}-{text.replace('/', ' ').replace('.', '')[:200]}.png"


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, record) of an eval jsonl, read by the project's jsonl reader (errors name file:line)."""
    for location, record in read_records(path):
        if not isinstance(record, dict):
            raise RecordError(location, "a record must be a JSON object")
        yield location.line, record


def _human_text(path: Path, number: int, record: dict[str, Any]) -> str:
    try:
        turn = record["conversations"][0]
        if turn["from"] != "human" or not isinstance(turn["value"], str):
            raise TypeError
        return turn["value"]
    except (KeyError, IndexError, TypeError):
        raise RecordError(f"{path}:{number}", "expected conversations[0] = {'from': 'human', 'value': <text>}") from None


def read_t2i_items(path: str | os.PathLike) -> list[EvalItem]:
    path = Path(path)
    return [
        EvalItem(int(record.get("id", index)), _human_text(path, number, record).strip())
        for index, (number, record) in enumerate(_lines(path))
    ]


def read_edit_items(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> list[EvalItem]:
    """Editing items: `<image>` removed from the instruction and trailing periods stripped."""
    path = Path(path)
    folder = Path(image_dir) if image_dir is not None else path.parent / "images"
    items = []
    for index, (number, record) in enumerate(_lines(path)):
        images = record.get("images")
        if not isinstance(images, list) or len(images) != 1:
            raise RecordError(f"{path}:{number}", "an editing record needs exactly one entry in 'images'")
        image = folder / images[0]
        if not image.is_file():
            raise InputImageNotFound(f"{path}:{number}: input image {image} not found")
        instruction = _human_text(path, number, record).replace("<image>", "").strip().rstrip(".")
        items.append(EvalItem(int(record.get("id", index)), instruction, str(image)))
    return items


# ---------------------------------------------------------------------------------------------
def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n\n")[0])
    # Flags as everywhere in the project; the official script's spellings are hidden aliases.
    model = parser.add_argument_group("models")
    add_option(model, "--model", "--mllm_path", dest="mllm_path", help="MLLM checkpoint folder")
    add_option(model, "--config", "--mllm_config", dest="mllm_config",
               help="official MLLM config .py: its training_args.output_dir is the checkpoint")
    add_option(model, "--dualvitok", "--tokenizer_checkpoint", dest="tokenizer_checkpoint", required=True,
               help="DualViTok checkpoint (file or folder)")
    add_option(model, "--dualvitok-config", "--tokenizer_config", dest="tokenizer_config",
               help="DualViTok config (.py/.json) if not beside the checkpoint")
    add_option(model, "--sdxl-decoder", "--diffusion_decoder_path", dest="diffusion_decoder_path",
               help="SDXL decoder folder: also decode with it (2x size)")
    add_option(model, "--dtype", "--torch_dtype", dest="torch_dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    data = parser.add_argument_group("data")
    data.add_argument("--t2i", action="append", default=[], type=Path, help="text-to-image jsonl (repeatable)")
    data.add_argument("--edit", action="append", default=[], type=Path, help="editing jsonl (repeatable)")
    add_option(data, "--image-dir", "--image_dir", dest="image_dir", type=Path,
               help="editing input images (default: images/ beside the jsonl)")
    add_option(data, "--output-dir", "--output_dir", dest="output_dir", type=Path, required=True)
    add_option(data, "--resolution-type", "--resolution_type", dest="resolution_type",
               choices=("fixed_anchors", "fixed"), default="fixed_anchors",
               help="t2i: every prompt at all 11 anchors, or only at --resolution² (editing: input anchor)")
    data.add_argument("--resolution", type=int, default=512)
    add_option(data, "--edit-resolution", "--edit_resolution", dest="edit_resolution",
               type=lambda text: tuple(int(v) for v in text.lower().split("x")),
               help="editing: pad every input to this HxW instead of its closest anchor")
    sampling = parser.add_argument_group("sampling (pixel top-k = 3 x top-k)")
    add_option(sampling, "--batch-size", "--batch_size", dest="batch_size", type=int, default=8)
    sampling.add_argument("--seed", type=int, default=42)
    sampling.add_argument("--temperature", type=float, default=1.0)
    add_option(sampling, "--top-k", "--top_k", dest="top_k", type=int, default=2048)
    add_option(sampling, "--top-p", "--top_p", dest="top_p", type=float, default=1.0)
    add_option(sampling, "--cfg-scale", "--llm_cfg_scale", dest="llm_cfg_scale", type=float, default=2.0)
    add_option(sampling, "--diffusion-cfg-scale", "--diffusion_cfg_scale", dest="diffusion_cfg_scale", type=float,
               default=2.0)
    add_option(sampling, "--diffusion-steps", "--diffusion_steps", dest="diffusion_steps", type=int, default=50)
    add_option(sampling, "--official-double-sampling", "--official_double_sampling", dest="official_double_sampling",
               action="store_true", help="reproduce the official T²/min-k quirk")
    sampling.add_argument(
        "--speculative", choices=("none", "jacobi"), default="jacobi",
        help="exact speculative Jacobi decoding (same output distribution, fewer forwards)",
    )
    args = parser.parse_args(argv)
    if (args.mllm_path is None) == (args.mllm_config is None):
        parser.error("give exactly one of --model and --config")
    if not args.t2i and not args.edit:
        parser.error("nothing to evaluate: give --t2i and/or --edit jsonl files")
    return args


def _checkpoint(args: argparse.Namespace) -> Path:
    if args.mllm_path is not None:
        return Path(args.mllm_path)
    from vision_tokenizer.utils.config import load_config

    config = load_config(args.mllm_config)
    try:
        return Path(config["training_args"]["output_dir"])
    except KeyError:
        raise UserError(f"--config {args.mllm_config} has no training_args.output_dir") from None


def _output_text(codes: Any, height: int, width: int) -> str:
    from illume.vocab import image_block_text, resolution_tag

    text = resolution_tag(height, width) + image_block_text(codes.semantic, codes.pixel)
    return re.sub(r"<\|image_level\d+_\d+\|>", "", text)


def _evaluate(
    pipe: Any, task: str, dataset: str, items: list[EvalItem], ratios: list, args, ctx: DistContext
):
    from vision_tokenizer.data.image_io import load_image

    from illume.inference.images import unpad_to_original
    from illume.inference.prompts import EDITING_EVAL, TEXT_TO_IMAGE_EVAL

    edit = task == "edit"
    name = (
        f"{dataset}_temperature{args.temperature}_topk{args.top_k}_topp{args.top_p}_cfg{args.llm_cfg_scale}"
    )
    root = args.output_dir / "generation_eval"
    root.mkdir(parents=True, exist_ok=True)
    sampling = dict(
        cfg_scale=args.llm_cfg_scale,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        official_double_sampling=args.official_double_sampling,
        speculative=args.speculative,
    )
    for ratio in ratios:
        # Editing runs at each input's anchor; the official names that setting (-1, -1).
        ratio_name = "ratio_h-1_w-1" if ratio is None else f"ratio_h{ratio[0]}_w{ratio[1]}"
        stem = f"{name}_{ratio_name}"
        writer = ShardedJsonlWriter(root, stem, rank=ctx.rank, world_size=ctx.world_size, key="id")
        done = writer.done_keys()
        mine = [item for item in items[ctx.rank :: ctx.world_size] if item.id not in done]
        for start in range(0, len(mine), args.batch_size):
            batch = mine[start : start + args.batch_size]
            seeds = [args.seed + item.id for item in batch]
            if edit:
                sources = [load_image(item.input_image_path) for item in batch]
                codes, padded = pipe.edit_codes(
                    sources,
                    [i.text for i in batch],
                    resolution=args.edit_resolution,
                    seed=seeds,
                    template=EDITING_EVAL,
                    batch_size=len(batch),
                    **sampling,
                )
            else:
                codes = pipe.generate_codes(
                    [i.text for i in batch],
                    resolution=ratio,
                    seed=seeds,
                    template=TEXT_TO_IMAGE_EVAL,
                    batch_size=len(batch),
                    **sampling,
                )
            decoders = [("dualvitok", f"{name}_dualvitok")]
            if args.diffusion_decoder_path:
                decoders.append(("sdxl", f"{name}_diffusion_cfg{args.diffusion_cfg_scale}"))
            for decoder, folder_name in decoders:
                images = pipe.decode(
                    codes,
                    decoder=decoder,
                    diffusion_cfg_scale=args.diffusion_cfg_scale,
                    diffusion_steps=args.diffusion_steps,
                    seed=seeds,
                )
                target = root / folder_name / ratio_name
                target.mkdir(parents=True, exist_ok=True)
                for k, (item, image) in enumerate(zip(batch, images)):
                    (unpad_to_original(image, padded[k]) if edit else image).save(
                        target / item.out_image_path
                    )
            rows = []
            for k, item in enumerate(batch):
                h, w = codes[k].resolution
                record = dict(
                    asdict(item),
                    out_image_path=item.out_image_path,
                    task=task,
                    image_sizes=[h, w],
                    image_embed_inds=[
                        codes[k].semantic.flatten().tolist(),
                        codes[k].pixel.flatten().tolist(),
                    ],
                    output_text=_output_text(codes[k], h, w),
                )
                if edit:
                    record["original_sizes"] = [padded[k].original_size[1], padded[k].original_size[0]]
                rows.append(record)
            writer.append(rows)
            logger.info("%s: %d/%d on rank %d", stem, start + len(batch), len(mine), ctx.rank)
        ctx.barrier()
        if ctx.is_main and writer.merge(expected={item.id for item in items}):
            logger.info("wrote %s", writer.merged_path)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: a wrong input is one line on stderr and status 2 (`--debug` for the traceback)."""
    return run_cli(PROG, _main, argv)


def _main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    for flag, paths in (("--t2i", args.t2i), ("--edit", args.edit)):
        for path in paths:
            require_path(path, flag, folder=False)
    require_path(args.tokenizer_checkpoint, "--dualvitok")
    if args.mllm_path is not None:
        require_path(args.mllm_path, "--model", folder=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from illume.inference import IllumePipeline
    from illume.vocab import RATIOS

    ctx = init_distributed()
    pipe = IllumePipeline.from_pretrained(
        _checkpoint(args),
        dualvitok=args.tokenizer_checkpoint,
        dualvitok_config=args.tokenizer_config,
        sdxl_decoder=args.diffusion_decoder_path,
        device=ctx.device,
        dtype=args.torch_dtype,
    )
    t2i_ratios = (
        list(RATIOS) if args.resolution_type == "fixed_anchors" else [(args.resolution, args.resolution)]
    )
    for path in args.t2i:
        _evaluate(pipe, "t2i", path.stem, read_t2i_items(path), t2i_ratios, args, ctx)
    for path in args.edit:
        _evaluate(pipe, "edit", path.stem, read_edit_items(path, args.image_dir), [None], args, ctx)
    ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
