"""Training throughput of the ILLUME+ MLLM: tokens/s, peak memory and MFU of optimizer steps.

    python benchmarks/train_throughput.py                 # 3B shapes on CUDA (random bf16 weights)
    python benchmarks/train_throughput.py --tiny          # tiny debug shapes on the CPU
    python benchmarks/train_throughput.py --batch-size 2 --image-size 384 --json out.json

Each step is what `illume/train/train.py` does per micro-batch: the merged multimodal forward
(vision tower on the input images, projector, Qwen2), the loss on the supervised tokens, the
backward and an AdamW step, with gradient checkpointing on the LLM. A sample is an editing-like
sequence: a short prompt, one input image (its full image block of positions) and a generated
image's code tokens as the target. Weights are random: speed does not depend on their values.

* tokens/s counts every position of the merged sequences (text + image blocks) per second;
* peak memory is `torch.cuda.max_memory_allocated` (CUDA) or the process's max RSS (CPU);
* MFU = model FLOPs per step / (seconds per step × peak dense FLOP/s of the device). Model FLOPs
  are counted by `torch.utils.flop_counter` on one step *without* recomputation (so gradient
  checkpointing's extra forward is not credited, the usual MFU convention). The device peak is
  looked up by name (H100/H200: 989 TFLOP/s bf16) or given with `--peak-tflops`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
from illume.model import ILLUMEQwen2Config, IllumeQwen2ForCausalLM
from illume.model.vision_tower import load_vq_model_config
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX, ImageGrid
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2Config

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
SPECIAL_IDS = [151665, 151666, 151667, 151668, 151669, 151670, 151671]


def qwen25_3b_shapes() -> dict:
    """Qwen2.5-3B decoder settings with ILLUME's extended vocabulary (SPEC-mllm C1, C3)."""
    return dict(
        vocab_size=283047, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
        num_attention_heads=16, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
        tie_word_embeddings=True, max_position_embeddings=32768,
    )  # fmt: skip


def tiny_shapes() -> dict:
    return dict(
        vocab_size=1447, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=4096,
    )  # fmt: skip


def build_model(
    tiny: bool, dtype: torch.dtype, device: torch.device, max_pixels: int
) -> IllumeQwen2ForCausalLM:
    vq_config = REPO / (
        "configs/tiny/dualvitok_tiny.py" if tiny else "configs/example/dualvitok/dualvitok_anyres_max512.py"
    )
    shapes = tiny_shapes() if tiny else qwen25_3b_shapes()
    special = list(range(342, 349)) if tiny else SPECIAL_IDS
    config = ILLUMEQwen2Config(
        **Qwen2Config(**shapes).to_dict() | {"model_type": "illume_qwen2"},
        mm_vision_tower={"type": "DualVisionTower", "vq_config": load_vq_model_config(str(vq_config)),
                         "min_pixels": 32 * 32, "max_pixels": max_pixels},
        mm_projector={"type": "MixedProjector", "projector_cfg1": {"type": "MLPProjector", "mlp_depth": 2},
                      "projector_cfg2": {"type": "MLPProjector", "mlp_depth": 2}},
        special_tokens_ids=special,
        tokenizer_model_max_length=None,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    config.use_cache = False
    with torch.device(device):
        model = IllumeQwen2ForCausalLM(config).to(dtype)
    model.activation_checkpointing_enable({"use_reentrant": False})
    model.train()
    return model


def make_batch(model, batch_size: int, image_size: int, prompt_len: int, device: torch.device) -> dict:
    """Editing-like samples: prompt with one input image, a generated image's tokens as target."""
    grid = ImageGrid.for_resolution(image_size, image_size)
    target_len = 2 + grid.num_tokens + 2  # tag, image block, <|im_end|>, "\n"
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, min(vocab, 150000), (batch_size, prompt_len), generator=generator)
    prompt[:, prompt_len // 2] = IMAGE_TOKEN_INDEX
    target = torch.randint(0, vocab, (batch_size, target_len), generator=generator)
    input_ids = torch.cat([prompt, target], dim=1)
    labels = torch.cat([torch.full_like(prompt, IGNORE_INDEX), target], dim=1)
    images = [
        torch.rand(1, 3, image_size, image_size, generator=generator) * 2 - 1 for _ in range(batch_size)
    ]
    positions = batch_size * (prompt_len - 1 + grid.num_tokens + target_len)
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "images": [img.to(device, model.dtype) for img in images],
        "positions": positions,
    }


def step(model, optimizer, batch) -> None:
    inputs = {k: v for k, v in batch.items() if k != "positions"}
    model(**inputs).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def count_flops(model, batch) -> float:
    """FLOPs of forward + backward of one step, without the checkpointing recompute."""
    model.activation_checkpointing_disable()
    inputs = {k: v for k, v in batch.items() if k != "positions"}
    with FlopCounterMode(display=False) as counter:
        model(**inputs).loss.backward()
    model.zero_grad(set_to_none=True)
    model.activation_checkpointing_enable({"use_reentrant": False})
    return float(counter.get_total_flops())


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny debug shapes on the CPU instead of 3B on CUDA"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="samples per step (default 4; tiny 2)")
    parser.add_argument(
        "--image-size", type=int, default=None, help="input/target side in px (default 512; tiny 64)"
    )
    parser.add_argument("--prompt-len", type=int, default=64, help="text tokens per prompt")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)"
    )
    parser.add_argument("--device", default=None, help="default: cuda if present (cpu with --tiny)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    if not args.tiny and device.type != "cuda":
        raise SystemExit("the 3B benchmark needs a CUDA device; use --tiny on the CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch_size = args.batch_size or (2 if args.tiny else 4)
    image_size = args.image_size or (64 if args.tiny else 512)
    torch.manual_seed(0)
    model = build_model(args.tiny, dtype, device, max_pixels=max(image_size * image_size, 32 * 32))
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-5, betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )  # fmt: skip
    batch = make_batch(model, batch_size, image_size, args.prompt_len, device)
    flops = count_flops(model, batch)
    for _ in range(args.warmup):
        step(model, optimizer, batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        step(model, optimizer, batch)
        sync(device)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shapes": "tiny" if args.tiny else "qwen2.5-3b + full DualViTok encoders",
        "dtype": str(dtype).removeprefix("torch."),
        "params": sum(p.numel() for p in model.parameters()),
        "batch_size": batch_size,
        "image_size": image_size,
        "positions_per_step": batch["positions"],
        "seconds_per_step": seconds,
        "tokens_per_s": batch["positions"] / seconds,
        "model_tflop_per_step": flops / 1e12,
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        ),
        "mfu": None if peak is None else flops / seconds / (peak * 1e12),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
