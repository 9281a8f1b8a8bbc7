"""DualViTok throughput: encode and decode images/s, FLOPs per image and achieved TFLOP/s.

    python benchmarks/tokenizer_speed.py                       # full official model, random weights
    python benchmarks/tokenizer_speed.py --tiny                # CPU smoke run with the tiny config
    python benchmarks/tokenizer_speed.py --sizes 256 --dtypes bf16 --batch-sizes 32

Encode = `encode_code` (image → both index grids); decode = `decode_code` (index grids → image),
fed random codes of the right grid shapes. bf16/fp16 rows run under autocast with float32
weights, as the official measurement did. decode_fast = the inference fast path
(`vision_tokenizer.models.fast_decode.FastDecoder`: weights in the row's dtype, channels_last,
compiled decoder on CUDA) on the same codes; its `× decode` column is its speed over the plain
decode row of the same size, dtype and batch in this run. Each row: warm-up calls, then the median of timed calls
with the device synchronised around each; FLOPs are counted once per (op, size) on one image with
`torch.utils.flop_counter.FlopCounterMode`. A size that runs out of memory is reported as OOM in
the table instead of stopping the run. Prints a Markdown table (paste it into benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.models.fast_decode import FastDecoder
from vision_tokenizer.runtime.distributed import DTYPES
from vision_tokenizer.utils.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_CONFIG = REPO_ROOT / "configs" / "example" / "dualvitok" / "dualvitok_anyres_max512.py"
TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py"
# The official code on one H200: random weights, bf16 autocast, 256x256, batch 32 (images/s).
OFFICIAL_H200 = {"encode": 23.0, "decode": 69.0}
OFFICIAL_SIZE = 256


@dataclass
class Row:
    op: str
    size: int
    dtype: str
    batch: int
    images_per_s: float | None = None
    ms_per_batch: float | None = None
    gflop_per_image: float | None = None
    tflops: float | None = None
    peak_gib: float | None = None
    vs_decode: float | None = None
    note: str = ""


def pick_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        getattr(torch, device.type).synchronize()


def precision(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def time_calls(fn: Callable[[], object], device: torch.device, warmup: int, iters: int) -> float:
    """Median wall time of `fn` in seconds, device synchronised around each call."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_flops(fn: Callable[[], object]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def build_model(config: Path, device: torch.device, seed: int) -> DualViTok:
    """Random weights straight on the device (no multi-GB CPU initialisation first)."""
    torch.manual_seed(seed)
    with device:
        model = DualViTok.from_config(load_config(config).vq_model)
    return model.eval()


def random_images(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, device=device) * 2 - 1


def code_shapes_and_flops(model: DualViTok, size: int, device: torch.device) -> dict:
    """Grid shapes and the FLOPs of one image for both ops (fp32, batch 1)."""
    image = random_images(1, size, device)
    with torch.inference_mode():
        semantic, pixel = model.encode_code(image)
        encode_flops = count_flops(lambda: model.encode_code(image))
        decode_flops = count_flops(lambda: model.decode_code(semantic, pixel))
    return {
        "semantic": tuple(semantic.shape[1:]), "pixel": tuple(pixel.shape[1:]),
        "encode": encode_flops, "decode": decode_flops,
    }


def measure_row(model: DualViTok, row: Row, info: dict, codebooks: tuple[int, int], device: torch.device,
                warmup: int, iters: int) -> Row:
    dtype = DTYPES[row.dtype]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if row.op == "encode":
            inputs = random_images(row.batch, row.size, device)

            def call() -> object:
                return model.encode_code(inputs)
        else:
            generator = torch.Generator().manual_seed(row.size)  # the same codes for decode and decode_fast
            semantic = torch.randint(codebooks[0], (row.batch, *info["semantic"]), generator=generator).to(device)
            pixel = torch.randint(codebooks[1], (row.batch, *info["pixel"]), generator=generator).to(device)
            decoder = FastDecoder(model, dtype=dtype) if row.op == "decode_fast" else model

            def call() -> object:
                return decoder.decode_code(semantic, pixel)

        autocast = precision(device, dtype) if row.op != "decode_fast" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            seconds = time_calls(call, device, warmup, iters)
    except torch.OutOfMemoryError:
        row.note = "OOM"
        return row
    finally:
        inputs = semantic = pixel = decoder = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row.ms_per_batch = seconds * 1e3
    row.images_per_s = row.batch / seconds
    flops = info["decode" if row.op == "decode_fast" else row.op]
    row.gflop_per_image = flops / 1e9
    row.tflops = flops * row.images_per_s / 1e12
    if device.type == "cuda":
        row.peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(rows: list[Row]) -> str:
    lines = [
        "| op | size | dtype | batch | img/s | ms/batch | GFLOP/img | TFLOP/s | peak GiB | × decode | × official H200 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "-"
        if r.images_per_s is not None and r.size == OFFICIAL_SIZE:
            ratio = f"{r.images_per_s / OFFICIAL_H200[r.op.removesuffix('_fast')]:.2f}"
        speed = r.note or _fmt(r.images_per_s, 2)
        lines.append(
            f"| {r.op} | {r.size}² | {r.dtype} | {r.batch} | {speed} | {_fmt(r.ms_per_batch, 1)} | "
            f"{_fmt(r.gflop_per_image, 1)} | {_fmt(r.tflops, 2)} | {_fmt(r.peak_gib, 1)} | {_fmt(r.vs_decode, 2)} | "
            f"{ratio} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None,
                        help=f"tokenizer config (default: {OFFICIAL_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("--tiny", action="store_true",
                        help="use configs/tiny/dualvitok_tiny.py with CPU-sized defaults (256² only, batch 2, "
                        "2 timed iterations)")
    parser.add_argument("--sizes", type=int, nargs="+", default=None, help="square image sides (default 256 512; tiny: 256)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default 32 128 (tiny: 2)")
    parser.add_argument("--ops", nargs="+", choices=["encode", "decode", "decode_fast"],
                        default=["encode", "decode", "decode_fast"])
    parser.add_argument("--iters", type=int, default=None, help="timed calls per row (default 5, tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 2, tiny: 1)")
    parser.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = TINY_CONFIG if args.tiny else OFFICIAL_CONFIG
    if args.sizes is None:
        args.sizes = [256] if args.tiny else [256, 512]
    if args.batch_sizes is None:
        args.batch_sizes = [2] if args.tiny else [32, 128]
    if args.iters is None:
        args.iters = 2 if args.tiny else 5
    if args.warmup is None:
        args.warmup = 1 if args.tiny else 2
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{device.type} ({torch.get_num_threads()} threads)"
    model = build_model(args.config, device, args.seed)
    vq = load_config(args.config).vq_model.config
    codebooks = (vq.semantic_quantizer.codebook_size, vq.pixel_quantizer.codebook_size)
    print(f"device: {name}; config: {args.config}; torch {torch.__version__}")

    rows = []
    for size in args.sizes:
        try:
            info = code_shapes_and_flops(model, size, device)
        except torch.OutOfMemoryError:
            rows += [Row(op, size, d, b, note="OOM") for op in args.ops for d in args.dtypes for b in args.batch_sizes]
            continue
        for op in args.ops:
            for dtype in args.dtypes:
                for batch in args.batch_sizes:
                    row = measure_row(model, Row(op, size, dtype, batch), info, codebooks, device,
                                      args.warmup, args.iters)
                    rows.append(row)
                    plain = next((r for r in rows if r.op == "decode" and (r.size, r.dtype, r.batch) == (size, dtype, batch)), None)
                    if op == "decode_fast" and plain and plain.images_per_s and row.images_per_s:
                        row.vs_decode = row.images_per_s / plain.images_per_s
                    print(f"  {op} {size}² {dtype} batch {batch}: {row.note or _fmt(row.images_per_s, 2) + ' img/s'}",
                          flush=True)
    print()
    print(format_table(rows))
    print(f"\n× official: images/s divided by the official code on one H200 at {OFFICIAL_SIZE}², bf16 autocast, "
          f"batch 32 (encode {OFFICIAL_H200['encode']:g}, decode {OFFICIAL_H200['decode']:g} img/s).")
    if args.json is not None:
        args.json.write_text(json.dumps({"device": name, "config": str(args.config),
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    return rows


if __name__ == "__main__":
    main()
