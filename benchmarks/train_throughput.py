"""Training throughput of the ILLUME+ MLLM: the real recipe next to the best setting, same run.

    python benchmarks/train_throughput.py                 # 3B shapes on CUDA (random bf16 weights)
    python benchmarks/train_throughput.py --tiny          # tiny debug shapes on the CPU
    python benchmarks/train_throughput.py --loss-memory   # LM head + cross-entropy alone, 283,047 rows

An optimizer step trains on `--batch-size` samples of mixed lengths: editing-like sequences (a
prompt, one input image of a side from `--image-size` down to half of it, a generated image's
code tokens as the target), so image sizes and sequence lengths differ within a step.

* `official` is the released recipe: one sample per micro-batch (gradient accumulation over the
  step), full-vocabulary logits and transformers' loss, activation checkpointing on every layer,
  unfused AdamW, and DeepSpeed ZeRO-2 (bf16 master weights on CUDA) when it is installed;
* `best`: the step's samples packed into one row (`packing=True`), the chunked / liger loss
  (`cross_entropy_backend`), checkpointing every `--every-n-layers`-th layer (0: none) and fused
  AdamW (`optim='adamw_torch_fused'`) — the switches a training config sets.

Every setting runs in its own process, so peak memory is its own: `torch.cuda.max_memory_allocated`
on CUDA, the growth of the process's max RSS over the step on the CPU. tokens/s counts every
position of the merged sequences. MFU = model FLOPs of a step (counted once by
`torch.utils.flop_counter` without recomputation, the usual convention) / (seconds per step ×
device peak: H100/H200 989 bf16 TFLOP/s, or `--peak-tflops`).

`--loss-memory` compares only the head + loss of one step (forward and backward) at a realistic
vocabulary: plain logits vs the chunked implementation, peak memory and time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from illume.model import ILLUMEQwen2Config, IllumeQwen2ForCausalLM
from illume.model.vision_tower import load_vq_model_config
from illume.train.loss import linear_cross_entropy
from illume.train.objective import ObjectiveConfig, empty_index, training_objective
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX, ImageGrid
from torch.utils.flop_counter import FlopCounterMode
from transformers import Qwen2Config

REPO = Path(__file__).resolve().parents[1]
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
SPECIAL_IDS = [151665, 151666, 151667, 151668, 151669, 151670, 151671]
SETTINGS = ("official", "best")


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


def build_model(tiny: bool, dtype: torch.dtype, device: torch.device, max_pixels: int) -> IllumeQwen2ForCausalLM:
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
    config._attn_implementation = "flash_attention_2" if device.type == "cuda" and _has_flash() else "sdpa"
    config.use_cache = False
    torch.manual_seed(0)
    with torch.device(device):
        model = IllumeQwen2ForCausalLM(config).to(dtype)
    return model.train()


def _has_flash() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def image_sides(batch_size: int, image_size: int) -> list[int]:
    """Sides from `image_size` down to about half of it, multiples of 16 (at least 32)."""
    steps = [1.0, 0.75, 0.5]
    return [max(32, int(image_size * steps[i % len(steps)]) // 16 * 16) for i in range(batch_size)]


def make_samples(model, batch_size: int, image_size: int, prompt_len: int, device: torch.device) -> list[dict]:
    """Editing-like samples of mixed sizes: prompt with one input image, a generated image as target."""
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    samples = []
    for side in image_sides(batch_size, image_size):
        grid = ImageGrid.for_resolution(side, side)
        target_len = 2 + grid.num_tokens + 2  # tag, image block, <|im_end|>, "\n"
        prompt = torch.randint(0, min(vocab, 150000), (1, prompt_len), generator=generator)
        prompt[:, prompt_len // 2] = IMAGE_TOKEN_INDEX
        target = torch.randint(0, vocab, (1, target_len), generator=generator)
        input_ids = torch.cat([prompt, target], dim=1)
        samples.append(
            {
                "input_ids": input_ids.to(device),
                "labels": torch.cat([torch.full_like(prompt, IGNORE_INDEX), target], dim=1).to(device),
                "attention_mask": torch.ones_like(input_ids).to(device),
                "images": [(torch.rand(1, 3, side, side, generator=generator) * 2 - 1).to(device, model.dtype)],
                "positions": prompt_len - 1 + grid.num_tokens + target_len,
            }
        )
    return samples


def collate(samples: list[dict]) -> dict:
    """Right-padded batch of several samples (the packing hook drops the padding again)."""
    longest = max(s["input_ids"].shape[1] for s in samples)

    def pad(key: str, value: int) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(s[key], (0, longest - s[key].shape[1]), value=value) for s in samples])

    return {"input_ids": pad("input_ids", 0), "labels": pad("labels", IGNORE_INDEX),
            "attention_mask": pad("attention_mask", 0), "images": [s["images"][0] for s in samples]}  # fmt: skip


def model_inputs(sample: dict) -> dict:
    return {k: v for k, v in sample.items() if k != "positions"}


class Runner:
    """One setting's optimizer step over all samples."""

    def __init__(self, setting: str, model, samples: list[dict], args, device: torch.device) -> None:
        self.setting, self.model, self.samples, self.device = setting, model, samples, device
        params = [p for p in model.parameters() if p.requires_grad]
        every = 1 if setting == "official" else args.every_n_layers
        if every:
            model.activation_checkpointing_enable({"use_reentrant": False}, every_n_layers=every)
        self.objective = ObjectiveConfig(backend=args.backend, chunk_size=args.chunk, packing=True)
        fused = setting == "best"
        optimizer = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), fused=fused, foreach=not fused)
        self.engine = None
        if setting == "official" and args.deepspeed and _deepspeed_available():
            self.engine, optimizer = _deepspeed_engine(model, optimizer, len(samples), device)
        self.optimizer = optimizer
        self.batch = collate(samples)

    def step(self) -> None:
        if self.setting == "best":
            with training_objective(self.model, self.objective):
                loss = self.model(**self.batch, logits_to_keep=empty_index(self.device)).loss
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            return
        for sample in self.samples:
            loss = (self.engine or self.model)(**model_inputs(sample)).loss
            if self.engine is not None:
                self.engine.backward(loss)
                self.engine.step()
            else:
                (loss / len(self.samples)).backward()
        if self.engine is None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)


def _deepspeed_available() -> bool:
    try:
        import deepspeed  # noqa: F401
    except Exception:  # deepspeed raises various errors when it cannot set itself up
        return False
    return True


def _deepspeed_engine(model, optimizer, accumulation: int, device: torch.device):
    """ZeRO-2 as `ILLUME/scripts/zero2.json`, one process; bf16 (fp32 master weights) on CUDA."""
    import deepspeed

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": os.environ.get("MASTER_PORT", "29671")}.items():  # fmt: skip
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    config = json.loads((REPO / "ILLUME" / "scripts" / "zero2.json").read_text())
    config.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=accumulation,
                  train_batch_size=accumulation, gradient_clipping=1.0)  # fmt: skip
    config["bf16"] = {"enabled": device.type == "cuda"}
    config["fp16"] = {"enabled": False}
    engine, optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, optimizer


def count_flops(model, samples: list[dict]) -> float:
    """FLOPs of forward + backward of the step's samples, without any recompute."""
    with FlopCounterMode(display=False) as counter:
        for sample in samples:
            model(**model_inputs(sample)).loss.backward()
    model.zero_grad(set_to_none=True)
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


def max_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(fn, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Median seconds per call and peak memory growth (GiB) over the timed calls."""
    before = max_rss_gib()  # the lifetime maximum only grows: take it before the first call
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else max_rss_gib() - before
    return statistics.median(times), peak


def run_setting(args, device: torch.device, dtype: torch.dtype) -> dict:
    model = build_model(args.tiny, dtype, device, max_pixels=max(args.image_size**2, 32 * 32))
    samples = make_samples(model, args.batch_size, args.image_size, args.prompt_len, device)
    flops = count_flops(model, samples) if args.setting == "best" else None
    runner = Runner(args.setting, model, samples, args, device)
    seconds, peak = measure(runner.step, args.steps, args.warmup, device)
    positions = sum(s["positions"] for s in samples)
    return {
        "setting": args.setting,
        "deepspeed": runner.engine is not None,
        "params": sum(p.numel() for p in model.parameters()),
        "positions_per_step": positions,
        "seconds_per_step": seconds,
        "tokens_per_s": positions / seconds,
        "peak_memory_gib": peak,
        "model_tflop_per_step": None if flops is None else flops / 1e12,
    }


def run_loss_memory(args, device: torch.device, dtype: torch.dtype) -> dict:
    """One head + loss forward/backward at `--vocab` rows; `--setting` official = plain, best = chunked."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.positions, args.hidden, generator=generator).to(device, dtype).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=generator) * 0.02).to(device, dtype).requires_grad_()
    labels = torch.randint(0, args.vocab, (args.positions,), generator=generator).to(device)
    labels[: args.positions // 4] = IGNORE_INDEX  # prompt positions
    backend = "plain" if args.setting == "official" else ("auto" if device.type == "cuda" else "chunked")

    def step() -> None:
        out = linear_cross_entropy(hidden, weight, labels, backend=backend, chunk_size=args.chunk)
        (out.total / out.count).backward()
        hidden.grad = weight.grad = None

    seconds, peak = measure(step, args.steps, args.warmup, device)
    return {"setting": args.setting, "backend": backend, "seconds_per_step": seconds, "peak_memory_gib": peak,
            "tokens_per_s": args.positions / seconds}  # fmt: skip


def child(args) -> None:
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    result = run_loss_memory(args, device, dtype) if args.loss_memory else run_setting(args, device, dtype)
    print(json.dumps(result))


def parent(args, argv: list[str]) -> dict:
    """Run each setting in a fresh process (own peak memory) and put them side by side."""
    rows = {}
    for setting in SETTINGS:
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--setting", setting, "--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if done.returncode != 0:
            raise SystemExit(f"setting {setting} failed:\n{done.stderr[-4000:]}")
        rows[setting] = json.loads(done.stdout.strip().splitlines()[-1])
    official, best = rows["official"], rows["best"]
    device = torch.device(args.device)
    peak = peak_tflops(device, args.peak_tflops)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "mode": "loss_memory" if args.loss_memory else "train_step",
        "dtype": "bfloat16" if device.type == "cuda" else "float32",
        "settings": rows,
        "speedup": best["seconds_per_step"] and official["seconds_per_step"] / best["seconds_per_step"],
        "memory_ratio": best["peak_memory_gib"] / official["peak_memory_gib"] if official["peak_memory_gib"] > 0 else None,
    }  # fmt: skip
    if args.loss_memory:
        result.update(vocab=args.vocab, hidden=args.hidden, positions=args.positions, chunk=args.chunk)
    else:
        flops = best["model_tflop_per_step"] * 1e12
        result.update(
            shapes="tiny" if args.tiny else "qwen2.5-3b + full DualViTok encoders",
            batch_size=args.batch_size, image_sides=image_sides(args.batch_size, args.image_size),
            every_n_layers=args.every_n_layers,
            mfu={k: None if peak is None else flops / r["seconds_per_step"] / (peak * 1e12) for k, r in rows.items()},
        )  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny debug shapes on the CPU instead of 3B on CUDA")
    parser.add_argument("--batch-size", type=int, default=None, help="samples per optimizer step (default 4; tiny 3)")
    parser.add_argument("--image-size", type=int, default=None, help="largest image side in px (default 512; tiny 64)")
    parser.add_argument("--prompt-len", type=int, default=64, help="text tokens per prompt")
    parser.add_argument("--every-n-layers", type=int, default=None,
                        help="best setting: checkpoint every n-th layer, 0 = none (default 3; tiny 0)")
    parser.add_argument("--backend", default="auto", help="best setting's cross-entropy backend (auto/chunked/liger)")
    parser.add_argument("--chunk", type=int, default=None, help="positions per chunk of the chunked loss (default 1024; CPU --loss-memory 128)")
    parser.add_argument("--no-deepspeed", dest="deepspeed", action="store_false",
                        help="official setting without DeepSpeed even when it is installed")
    parser.add_argument("--loss-memory", action="store_true", help="benchmark the head + loss alone")
    parser.add_argument("--vocab", type=int, default=283047, help="--loss-memory: output rows")
    parser.add_argument("--hidden", type=int, default=None, help="--loss-memory: hidden size (default 2048; CPU 128)")
    parser.add_argument("--positions", type=int, default=None, help="--loss-memory: positions (default 8192; CPU 1024)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: by name)")
    parser.add_argument("--device", default=None, help="default: cuda if present (cpu with --tiny)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--setting", choices=SETTINGS, default=None, help=argparse.SUPPRESS)  # one child process
    argv = sys.argv[1:]
    args = parser.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    cuda = args.device.startswith("cuda")
    if not args.tiny and not args.loss_memory and not cuda:
        raise SystemExit("the 3B benchmark needs a CUDA device; use --tiny (or --loss-memory) on the CPU")
    args.batch_size = args.batch_size or (3 if args.tiny else 4)
    args.image_size = args.image_size or (64 if args.tiny else 512)
    args.every_n_layers = args.every_n_layers if args.every_n_layers is not None else (0 if args.tiny else 3)
    args.hidden = args.hidden or (2048 if cuda else 128)
    args.positions = args.positions or (8192 if cuda else 1024)
    args.chunk = args.chunk or (128 if args.loss_memory and not cuda else 1024)
    if args.setting is not None:
        child(args)
        return
    result = parent(args, _without_json(argv))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


def _without_json(argv: list[str]) -> list[str]:
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--json":
            skip = True
        elif not item.startswith("--json="):
            out.append(item)
    return out


if __name__ == "__main__":
    main()
