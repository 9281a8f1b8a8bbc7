"""Image-generation speed: our engine vs a re-creation of the official decoding, in one run.

For each resolution (256², 512²) and batch size (1, 16) this times text-to-image decoding with
CFG 2.0, top-k 2048 (pixel 6144), and reports seconds per image and image tokens per second:

* `engine`: `illume.inference.GenerationEngine` — static KV cache, conditional and unconditional
  rows in one forward, forced structure tokens fed with the next sampled one, fused q/k/v and
  gate/up GEMMs, level-sliced LM head, CUDA graphs on GPU (`--speculative none`);
* `engine+jacobi`: the same with exact speculative Jacobi decoding (`--speculative jacobi`);
* `official`: transformers `generate` with a logits processor built the way the official
  `InterleavedLogitsProcessor` works — a second (KV-cached) forward of the unconditional prompt
  per token, a vocabulary-wide mask rebuilt every step, state driven by row 0, and HF's own
  temperature/top-k/top-p applied again after it.

`--tiny` runs a 2-layer model with the tiny codebooks on CPU (always works). Without it the
model has ILLUME+ 3B shapes (Qwen2.5-3B + 131,111 extension rows) with random bf16 weights and
needs a GPU. Weights are random, so only speed is meaningful, and the forward passes per image
(device-independent) are what speculation saves; random weights make acceptance rates unlike a
trained model's. Each row also gives its speed-up over the official approach measured in the same
run, peak device memory (CUDA), and how often the engine rebuilt its cache or captured a graph
(the prompt length changes between calls, so a rebuild per call would show).

    python benchmarks/generation_speed.py --tiny
    python benchmarks/generation_speed.py --sizes 512 --batch-sizes 1 --official-max-batch 1
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from functools import partial

import torch
from illume.inference import GenerationEngine, PromptEmbeddings, RowSpec, SamplingConfig
from illume.inference.sampling import row_keys
from illume.vocab import ImageGrid, ImageVocabulary, extension_tokens
from transformers import LogitsProcessor, LogitsProcessorList, Qwen2Config, Qwen2ForCausalLM

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # the first three Qwen2.5 added tokens


class _LayoutTokenizer:
    """Just enough of a tokenizer for `ImageVocabulary.from_tokenizer`: the official id layout
    (Qwen added tokens from `base - 22`, then the ILLUME extension in `add_tokens` order)."""

    def __init__(self, base: int, codebook_sizes: tuple[int, int]) -> None:
        self.ids = {tok: base - 22 + i for i, tok in enumerate(QWEN_SPECIALS)}
        self.added = {tok: base + i for i, tok in enumerate(extension_tokens(codebook_sizes))}
        self.ids.update(self.added)
        self.pad_token_id = self.ids["<|endoftext|>"]
        self.unk_token_id = None

    def convert_tokens_to_ids(self, tokens: list[str]) -> list[int | None]:
        return [self.ids.get(t) for t in tokens]

    def get_added_vocab(self) -> dict[str, int]:
        return self.added


@dataclass(frozen=True)
class Shapes:
    name: str
    base_vocab: int  # ids before <start_of_image>
    embedding_rows: int
    codebooks: tuple[int, int]
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int


TINY = Shapes("tiny", 342, 1447, (256, 768), 64, 128, 2, 4, 2)
ILLUME_3B = Shapes("illume_plus_3b", 151665, 283047, (32768, 98304), 2048, 11008, 36, 16, 2)


def build_model(shapes: Shapes, device: torch.device, dtype: torch.dtype) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=shapes.embedding_rows, hidden_size=shapes.hidden, intermediate_size=shapes.intermediate,
        num_hidden_layers=shapes.layers, num_attention_heads=shapes.heads, num_key_value_heads=shapes.kv_heads,
        max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.to(dtype).eval()


# ---------------------------------------------------------------------------------------------
class OfficialStyleProcessor(LogitsProcessor):
    """The official per-step work: uncond forward, full-vocabulary mask in Python, phase sampling."""

    def __init__(
        self, model, vocab: ImageVocabulary, grid: ImageGrid, uncond_ids, uncond_mask, scale, sampling
    ):
        self.model, self.vocab, self.grid, self.scale, self.sampling = model, vocab, grid, scale, sampling
        self.uncond_ids, self.uncond_mask = uncond_ids, uncond_mask
        self.cache = None
        self.in_image, self.level, self.row, self.col = False, -1, 0, 0

    def _update(self, last: int) -> None:
        v = self.vocab
        if last == v.start_of_image:
            self.in_image, self.level, self.row, self.col = True, -1, 0, 0
        elif last in v.start_of_levels:
            self.level, self.row, self.col = v.start_of_levels.index(last), 0, 0
        elif last in v.end_of_levels:
            self.level = -1
        elif last == v.end_of_image:
            self.in_image = False
        elif last == v.end_of_line and self.in_image:
            self.row, self.col = self.row + 1, 0
        elif self.level >= 0:
            self.col += 1

    def _uncond_logits(self, newest: torch.Tensor) -> torch.Tensor:
        from transformers import DynamicCache

        if self.cache is None:
            self.cache = DynamicCache()
            ids = torch.cat([self.uncond_ids, newest], dim=1)
            self.uncond_mask = torch.cat([self.uncond_mask, torch.ones_like(newest)], dim=1)
        else:
            ids = newest
            self.uncond_mask = torch.cat([self.uncond_mask, torch.ones_like(newest)], dim=1)
        positions = (self.uncond_mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        cache_kw = (
            "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        )
        out = self.model(input_ids=ids, attention_mask=self.uncond_mask, position_ids=positions,
                         use_cache=True, **{cache_kw: self.cache})  # fmt: skip
        return out.logits[:, -1].float()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        v = self.vocab
        if input_ids.shape[1] > self.prompt_length:
            self._update(int(input_ids[0, -1]))
        scores = torch.log_softmax(scores.float(), dim=-1)
        if self.in_image and self.scale != 1.0:
            uncond = torch.log_softmax(self._uncond_logits(input_ids[:, -1:]), dim=-1)
            scores = self.scale * (scores - uncond) + uncond
        disallowed = torch.ones(scores.shape[-1], dtype=torch.bool, device=scores.device)
        rows = self.grid.semantic if self.level == 0 else self.grid.pixel
        if not self.in_image:
            disallowed[v.start_of_image] = False
        elif self.level >= 0 and self.row == rows[0]:
            disallowed[v.end_of_levels[self.level]] = False
        elif self.level >= 0 and self.col == rows[1]:
            disallowed[v.end_of_line] = False
        elif self.level >= 0:
            lo, hi = v.level_range(self.level)
            disallowed[lo:hi] = False
        else:
            last = int(input_ids[0, -1])
            follow = {v.start_of_image: v.start_of_levels[0], v.end_of_levels[0]: v.start_of_levels[1],
                      v.end_of_levels[1]: v.end_of_image}  # fmt: skip
            disallowed[follow.get(last, v.end_of_text)] = False
        scores = scores.masked_fill(disallowed, -math.inf)
        params = self.sampling.phase(self.level + 1 if self.level >= 0 else 0)
        scores = scores / params.temperature
        if params.top_k > 0:
            kth = torch.topk(scores, min(params.top_k, scores.shape[-1])).values[..., -1:]
            scores = scores.masked_fill(scores < kth, -math.inf)
        return scores


def run_official(model, vocab, grid, cond, uncond, sampling) -> None:
    processor = OfficialStyleProcessor(model, vocab, grid, uncond[0], uncond[1], sampling.cfg_scale, sampling)
    processor.prompt_length = cond[0].shape[1]
    model.generate(
        cond[0], attention_mask=cond[1], logits_processor=LogitsProcessorList([processor]), do_sample=True,
        temperature=sampling.text.temperature, top_k=sampling.text.top_k, top_p=sampling.text.top_p,
        repetition_penalty=sampling.repetition_penalty,  # HF applies it before the custom processor
        max_new_tokens=grid.num_tokens, pad_token_id=vocab.pad,
    )  # fmt: skip


def run_engine(engine, grid, batch, prompt, sampling, seed, speculative) -> None:
    keys = row_keys([torch.Generator().manual_seed(seed + i) for i in range(batch)])
    engine.generate(prompt, [RowSpec(image=grid)] * batch, sampling, keys, speculative=speculative)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


@dataclass
class Row:
    approach: str
    resolution: int
    batch: int
    seconds_per_image: float
    image_tokens_per_second: float
    forward_passes_per_image: float
    speedup_vs_official: float | None = None
    peak_memory_gb: float | None = None


APPROACHES = {"engine": "none", "engine+jacobi": "jacobi"}


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on CPU (default: 3B shapes on GPU)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-length", type=int, default=40)
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument(
        "--official-max-batch", type=int, default=16, help="time the official approach up to this batch"
    )
    parser.add_argument("--no-cuda-graphs", action="store_true")
    parser.add_argument(
        "--speculative", nargs="+", choices=sorted(APPROACHES.values()), default=["none", "jacobi"],
        help="engine decoding modes to time (default both)",
    )
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument(
        "--repetition-penalty", type=float, default=1.0,
        help="repetition penalty of every approach (released generation_config: likely 1.05)",
    )  # fmt: skip
    parser.add_argument("--quantize", choices=("none", "int8", "fp8"), default="none",
                        help="weight-only quantization of the LLM (illume.inference.quantize)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (tiny mode)")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    args = parser.parse_args(argv)

    shapes = TINY if args.tiny else ILLUME_3B
    device = torch.device("cpu" if args.tiny else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the 3B-shape benchmark needs a GPU; use --tiny on CPU")
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.tiny else torch.bfloat16
    torch.manual_seed(0)
    model = build_model(shapes, device, dtype)
    if args.quantize != "none":
        from illume.inference.quantize import quantize_llm

        quantize_llm(model, args.quantize)
    vocab = ImageVocabulary.from_tokenizer(_LayoutTokenizer(shapes.base_vocab, shapes.codebooks))
    engine = GenerationEngine(model, vocab, use_cuda_graphs=not args.no_cuda_graphs)
    sampling = SamplingConfig.create(
        1.0, 2048, 1.0, cfg_scale=2.0, do_sample=not args.greedy, repetition_penalty=args.repetition_penalty
    )
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    mode = "greedy" if args.greedy else "top-k 2048/6144"
    if sampling.repetition_penalty != 1.0:
        mode += f", repetition penalty {sampling.repetition_penalty}"
    print(f"# {shapes.name} on {device_name} ({dtype}), CFG {sampling.cfg_scale}, {mode}")

    rows: list[Row] = []
    g = torch.Generator().manual_seed(1)
    for size in args.sizes:
        grid = ImageGrid.for_resolution(size, size)
        for batch in args.batch_sizes:
            ids = torch.randint(0, shapes.base_vocab - 22, (2 * batch, args.prompt_length), generator=g).to(
                device
            )
            mask = torch.ones_like(ids)
            with torch.no_grad():
                prompt = PromptEmbeddings(model.get_input_embeddings()(ids), mask)
                # The warm-up call has a shorter prompt: the timed call must reuse its cache/graphs.
                warm = PromptEmbeddings(prompt.embeds[:, 1:], mask[:, 1:]) if args.prompt_length > 1 else prompt
            measured: list[Row] = []
            for approach, mode in APPROACHES.items():
                if mode not in args.speculative:
                    continue
                if device.type == "cuda":  # capture graphs / warm the allocator outside the timing
                    run_engine(engine, grid, batch, warm, sampling, 0, mode)
                _reset_peak(device)
                before = engine.forward_passes
                seconds = _timed(partial(run_engine, engine, grid, batch, prompt, sampling, 1, mode), device)
                passes = engine.forward_passes - before
                measured.append(Row(approach, size, batch, seconds / batch, batch * grid.num_tokens / seconds,
                                    passes / batch, peak_memory_gb=_peak_gb(device)))  # fmt: skip
            if not args.skip_official and batch <= args.official_max_batch:
                cond = (ids[:batch], mask[:batch])
                uncond = (ids[batch:], mask[batch:])
                _reset_peak(device)
                with torch.no_grad():
                    seconds = _timed(partial(run_official, model, vocab, grid, cond, uncond, sampling), device)
                # One conditional and one unconditional forward per token of the block.
                official = Row("official", size, batch, seconds / batch, batch * grid.num_tokens / seconds,
                               2.0 * grid.num_tokens / batch, 1.0, _peak_gb(device))  # fmt: skip
                for row in measured:
                    row.speedup_vs_official = official.seconds_per_image / row.seconds_per_image
                measured.append(official)
            for row in measured:
                print(_format(row), flush=True)
            rows += measured
    dec = engine._decoder
    counts = dict(decoder_builds=engine.decoder_builds, graph_captures=dec.captures if dec is not None else 0)
    print(f"# cache builds {counts['decoder_builds']}, CUDA graph captures {counts['graph_captures']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                dict(device=device_name, shapes=shapes.name, torch=torch.__version__, quantize=args.quantize,
                     repetition_penalty=sampling.repetition_penalty,
                     **counts, rows=[asdict(r) for r in rows]),
                handle, indent=2,
            )  # fmt: skip
    return 0


def _format(row: Row) -> str:
    ratio = "" if row.speedup_vs_official is None else f", {row.speedup_vs_official:6.2f}x official"
    memory = "" if row.peak_memory_gb is None else f", peak {row.peak_memory_gb:.2f} GB"
    return (
        f"{row.approach:13s} {row.resolution:4d}² bs {row.batch:2d}: {row.seconds_per_image:8.3f} s/image, "
        f"{row.image_tokens_per_second:9.1f} image tokens/s, {row.forward_passes_per_image:7.1f} forward passes/image"
        f"{ratio}{memory}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
