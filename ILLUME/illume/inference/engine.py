"""Structured decoding: image grammar, per-level sampling and batched CFG over a static KV cache.

One call decodes a batch of rows. Each row follows a host-side state machine:

* a row that starts inside an image (text-to-image, editing: the prompt ends with the resolution
  tag) walks the precomputed plan of its grid — structural tokens are forced, codes are sampled
  from their level's id range — and stops after `<end_of_image>`;
* a text row (understanding, chat) samples text until an end-of-text id; when images are allowed,
  a height tag, then a matching width tag, then `<start_of_image>` open an image block with the
  grid of that resolution (a bare `<start_of_image>` uses the row's default grid), after which
  the row returns to text.

Forced tokens are never sampled, but they are still fed through the model. Rows whose next tokens
are all determined by plans need no device→host transfer at all, so the host runs ahead of the
GPU. With classifier-free guidance the batch holds the conditional rows followed by one
unconditional row each (its own prompt: "Generate a random image of …" or the reconstruction
prompt with the same input image); both halves run in the same forward and receive the same
tokens, and guidance is applied only at image-code positions. An unconditional row attends only
to its prompt and to the image it is guiding: text a row generates outside images is hidden
from it, as in the official implementation, which restarts the unconditional branch per image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from illume.inference.decoder import StaticDecoder, bucketed
from illume.inference.sampling import (
    PIXEL,
    SEMANTIC,
    TEXT,
    PhaseTable,
    SamplingConfig,
    cfg_combine,
    penalize_repeats,
    sample_tokens,
    step_keys,
)
from illume.inference.schedule import GENERATION_RESOLUTIONS, Requirement, TextRules
from illume.inference.speculative import SPECULATIVE_MODES, decode_image_rows
from illume.vocab import ImageGrid, ImageSchedule, ImageVocabulary

__all__ = ["RowSpec", "PromptEmbeddings", "GenerationEngine", "JACOBI_WINDOW"]

# Tokens per row and speculative window. Fixed (not sized from the batch) because a sampled row's
# trajectory depends on it, and a row's output must not depend on the batch it shares. At bs 16
# with CFG a window is 256 tokens, about where a 3B step turns compute-bound on an H100/H200.
JACOBI_WINDOW = 8


@dataclass(frozen=True)
class RowSpec:
    """How one row decodes.

    `image`: the row's prompt ends with this grid's resolution tag and the row generates exactly
    one image block. Otherwise the row generates text; with `allow_images` it may open image
    blocks (interleaved output), `default_grid` being used for `<start_of_image>` without a tag.
    """

    image: ImageGrid | None = None
    allow_images: bool = False
    default_grid: ImageGrid = field(default_factory=lambda: ImageGrid.for_resolution(512, 512))


@dataclass
class PromptEmbeddings:
    """Left-padded prompt embeddings (rows, L, H) and their attention mask (rows, L).

    With CFG the rows are the B conditional prompts followed by their B unconditional prompts.
    """

    embeds: torch.Tensor
    attention_mask: torch.Tensor


_TEXT, _WIDTH, _SOI, _IMAGE, _DONE = range(5)


class _Row:
    """Host-side decoding state of one conditional row."""

    def __init__(
        self, spec: RowSpec, vocab: ImageVocabulary, rules: TextRules, eos: frozenset[int], text_budget: int
    ):
        self.spec = spec
        self.vocab = vocab
        self.rules = rules
        self.eos = eos
        self.budget = text_budget
        self.stop_after_image = spec.image is not None
        self.plan: ImageSchedule | None = vocab.schedule(spec.image) if spec.image is not None else None
        self.mode = _IMAGE if self.plan is not None else _TEXT
        self.pos = 0
        self.height = 0
        self.length = 0

    @property
    def max_steps(self) -> int:
        """Most tokens the row can produce: its image block, or the text budget plus one image
        (an image opened before the budget runs out is always completed)."""
        if self.stop_after_image:
            return len(self.plan)
        return self.budget + (self.rules.max_image_tokens() if self.spec.allow_images else 0)

    @property
    def needs_host(self) -> bool:
        """Whether the next transition depends on the sampled value."""
        return self.mode in (_TEXT, _WIDTH)

    @property
    def done(self) -> bool:
        return self.mode == _DONE

    def requirement(self) -> Requirement:
        if self.mode == _IMAGE:
            forced = self.plan.forced[self.pos]
            if forced >= 0:
                return Requirement(forced=forced)
            level = self.plan.level[self.pos]
            lo, hi = self.vocab.level_range(level)
            return Requirement(phase=(SEMANTIC, PIXEL)[level], lo=lo, hi=hi)
        if self.mode == _TEXT:
            return self.rules.text(self.spec.allow_images)
        if self.mode == _WIDTH:
            return self.rules.after_height(self.height)
        if self.mode == _SOI:
            return Requirement(forced=self.vocab.start_of_image)
        return Requirement(forced=self.vocab.pad)

    def advance(self, token: int) -> tuple[bool, bool, bool]:
        """Consume the row's next token; returns (opens an image span, in an image span, closes one)."""
        self.length += 1
        mode = self.mode
        if mode == _IMAGE:
            self.pos += 1
            if self.pos < len(self.plan):
                return False, True, False
            self.mode = _DONE if self.stop_after_image or self.length >= self.budget else _TEXT
            return False, False, True
        if mode == _WIDTH:
            width = self.rules.width_of(token)
            self.plan = self.vocab.schedule(ImageGrid.for_resolution(self.height, width))
            self.mode = _SOI
            return False, True, False
        if mode == _SOI:
            self.mode, self.pos = _IMAGE, 1
            return False, True, False
        # text
        if token in self.eos:
            self.mode = _DONE
        elif token == self.vocab.start_of_image:
            self.plan = self.vocab.schedule(self.spec.default_grid)
            self.mode, self.pos = _IMAGE, 1
            return True, True, False
        elif (height := self.rules.height_of(token)) is not None:
            self.mode, self.height = _WIDTH, height
            return True, True, False
        elif self.length >= self.budget:
            self.mode = _DONE
        return False, False, False


@dataclass
class _Pattern:
    """Device tensors for one combination of row requirements (cached: patterns repeat)."""

    forced: torch.Tensor
    span: tuple[int, int] | None
    allowed: torch.Tensor | None
    table: PhaseTable | None
    cfg_rows: torch.Tensor | None
    cfg_all: bool


class GenerationEngine:
    """Decodes batches of rows with a `model` whose ids follow `vocab`.

    `model` is an ILLUME (or plain transformers Qwen2) causal LM. `eos_ids` end text rows
    (default: `<|im_end|>` and the pad/`<|endoftext|>` id). CUDA graphs are used on CUDA unless
    `use_cuda_graphs=False`.

    The cache is sized in `LENGTH_BUCKET` steps and kept across calls, so calls with other prompt
    lengths reuse it and its captured graphs; `decoder_builds` counts rebuilds. `forward_passes`
    counts model forwards (prefills and steps) over the engine's life.
    """

    def __init__(
        self,
        model: nn.Module,
        vocab: ImageVocabulary,
        *,
        resolutions: Sequence[tuple[int, int]] = GENERATION_RESOLUTIONS,
        eos_ids: Sequence[int] | None = None,
        use_cuda_graphs: bool | None = None,
    ) -> None:
        self.model = model
        self.vocab = vocab
        self.rules = TextRules(vocab, resolutions)
        self.eos = frozenset(eos_ids if eos_ids is not None else (vocab.end_of_text, vocab.pad))
        device = model.get_input_embeddings().weight.device
        self.use_cuda_graphs = device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self._decoder: StaticDecoder | None = None
        self.decoder_builds = 0
        self.forward_passes = 0

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _decoder_for(self, rows: int, max_len: int) -> StaticDecoder:
        """Reuse the cache (and its captured graphs) when it has these rows and room for `max_len`."""
        dec = self._decoder
        if dec is None or dec.rows != rows or dec.max_len < max_len:
            self._decoder = None  # free the old cache before allocating the new one
            dec = StaticDecoder(self.model, rows, bucketed(max_len), self.use_cuda_graphs)
            self._decoder = dec
            self.decoder_builds += 1
        return dec

    # ------------------------------------------------------------------ step patterns
    def _pattern(self, reqs: tuple[Requirement, ...], sampling: SamplingConfig, cache: dict) -> _Pattern:
        key = reqs
        if key in cache:
            return cache[key]
        device = self.device
        forced = torch.tensor([r.forced for r in reqs], dtype=torch.long, device=device)
        sampled = [r for r in reqs if r.sampled]
        if not sampled:
            pattern = _Pattern(forced, None, None, None, None, False)
            cache[key] = pattern
            return pattern
        span = (min(r.lo for r in sampled), max(r.hi for r in sampled))
        width = span[1] - span[0]
        allowed = None
        if any((r.lo, r.hi) != span or r.banned for r in sampled):
            ids = torch.arange(span[0], span[1])
            rows = []
            for r in reqs:
                if not r.sampled:
                    rows.append(torch.ones(width, dtype=torch.bool))
                    continue
                row = (ids >= r.lo) & (ids < r.hi)
                if r.banned:
                    banned = torch.tensor([b for b in r.banned if span[0] <= b < span[1]], dtype=torch.long)
                    row[banned - span[0]] = False
                rows.append(row)
            allowed = torch.stack(rows).to(device)
        stages = [[sampling.phase(r.phase if r.sampled else TEXT) for r in reqs]]
        if sampling.official_double_sampling:
            stages.append([sampling.text for _ in reqs])
        table = PhaseTable.build(stages, device, width)
        cfg_flags = [r.sampled and r.phase in (SEMANTIC, PIXEL) and sampling.uses_cfg for r in reqs]
        cfg_rows = torch.tensor(cfg_flags, device=device) if any(cfg_flags) else None
        cfg_all = all(f for f, r in zip(cfg_flags, reqs) if r.sampled)
        pattern = _Pattern(forced, span, allowed, table, cfg_rows, cfg_all)
        cache[key] = pattern
        return pattern

    def _select(
        self,
        pattern: _Pattern,
        logits: torch.Tensor | None,
        keys: torch.Tensor,
        sampling: SamplingConfig,
        seen: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The next token of every conditional row (rows,), on the device; `seen` (rows, ids) marks
        the ids each row generated, for `sampling.repetition_penalty`."""
        if pattern.span is None:
            return pattern.forced
        batch = pattern.forced.shape[0]
        scores = logits[:batch]
        if seen is not None:
            lo, hi = pattern.span
            scores = penalize_repeats(scores, seen[:, lo:hi], sampling.repetition_penalty)
        if pattern.cfg_rows is not None:
            guided = cfg_combine(scores, logits[batch:], sampling.cfg_scale)
            scores = guided if pattern.cfg_all else torch.where(pattern.cfg_rows[:, None], guided, scores)
        if pattern.allowed is not None:
            scores = scores.masked_fill(~pattern.allowed, float("-inf"))
        drawn = sample_tokens(
            scores, pattern.table, keys, id_offset=pattern.span[0], greedy=not sampling.do_sample
        )
        return torch.where(pattern.forced >= 0, pattern.forced, drawn)

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def next_token_logits(
        self, prompt: PromptEmbeddings, span: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Logits (rows, ids) of the token after each prompt, over `span` (default: every id)."""
        rows, length = prompt.attention_mask.shape
        span = span or (0, self.model.get_output_embeddings().weight.shape[0])
        self.forward_passes += 1
        return self._decoder_for(rows, length + 1).prefill(prompt.embeds, prompt.attention_mask, span)

    @torch.no_grad()
    def stream(
        self,
        prompt: PromptEmbeddings,
        rows: Sequence[RowSpec],
        sampling: SamplingConfig,
        keys: torch.Tensor,
        *,
        max_new_tokens: int = 1024,
    ) -> Iterator[tuple[torch.Tensor, list[bool]]]:
        """Decode step by step; yields (tokens of the conditional rows (B,) on the device, which rows
        were still active for that token). `keys` (B,) are the rows' seeds (`sampling.row_keys`)."""
        batch = len(rows)
        cfg = sampling.uses_cfg
        total = 2 * batch if cfg else batch
        if prompt.embeds.shape[0] != total:
            raise ValueError(
                f"{prompt.embeds.shape[0]} prompt rows for {batch} rows"
                + (" with CFG (conditional rows, then as many unconditional ones)" if cfg else "")
            )
        if keys.shape != (batch,):
            raise ValueError(f"keys must have shape ({batch},), got {tuple(keys.shape)}")
        states = [_Row(spec, self.vocab, self.rules, self.eos, max_new_tokens) for spec in rows]
        steps = max(s.max_steps for s in states)
        prompt_len = prompt.embeds.shape[1]
        decoder = self._decoder_for(total, prompt_len + steps)
        state = decoder.state
        patterns: dict = {}
        visibility: dict = {}
        reqs = tuple(s.requirement() for s in states)
        pattern = self._pattern(reqs, sampling, patterns)
        logits = decoder.prefill(prompt.embeds, prompt.attention_mask, pattern.span)
        self.forward_passes += 1
        positions = prompt.attention_mask.long().sum(-1).tolist()
        image_start: dict[int, tuple[int, int]] = {}
        keys = keys.to(self.device)
        slot = prompt_len
        seen = None
        if sampling.repetition_penalty != 1.0:
            width = self.model.get_output_embeddings().weight.shape[0]
            seen = torch.zeros(batch, width, dtype=torch.bool, device=self.device)
            row_index = torch.arange(batch, device=self.device)
        for step in range(steps):
            tokens = self._select(pattern, logits, step_keys(keys, step), sampling, seen)
            if seen is not None:
                seen[row_index, tokens] = True
            host = tokens.tolist() if any(s.needs_host for s in states) else None
            active = [not s.done for s in states]
            visible = list(active) + ([False] * batch if cfg else [])
            for r, st in enumerate(states):
                if not active[r]:
                    continue
                token = host[r] if host is not None else reqs[r].forced
                opens, in_image, closes = st.advance(token)
                if not cfg:
                    continue
                if opens:
                    image_start[r] = (slot, positions[batch + r])
                visible[batch + r] = in_image
                if closes and r in image_start:
                    start_slot, start_pos = image_start.pop(r)
                    state.mask[batch + r, start_slot:slot] = False
                    positions[batch + r] = start_pos
                    state.positions[batch + r] = start_pos
            yield tokens, active
            if all(s.done for s in states):
                return
            reqs = tuple(s.requirement() for s in states)
            pattern = self._pattern(reqs, sampling, patterns)
            vis_key = tuple(visible)
            if vis_key not in visibility:
                flags = torch.tensor(vis_key, device=self.device)
                visibility[vis_key] = (flags, flags.long())
            flags, increments = visibility[vis_key]
            state.tokens[:batch].copy_(tokens)
            if cfg:
                state.tokens[batch:].copy_(tokens)
            state.mask[:, slot].copy_(flags)
            logits = decoder.step(pattern.span, slot + 1)
            self.forward_passes += 1
            state.positions.add_(increments)
            state.slot.add_(1)
            positions = [p + v for p, v in zip(positions, vis_key)]
            slot += 1

    def generate(
        self,
        prompt: PromptEmbeddings,
        rows: Sequence[RowSpec],
        sampling: SamplingConfig,
        keys: torch.Tensor,
        *,
        max_new_tokens: int = 1024,
        on_step: Callable[[], None] | None = None,
        speculative: str = "none",
        window: int = JACOBI_WINDOW,
    ) -> list[list[int]]:
        """Generated ids per conditional row (an ended text row includes its end-of-text id).

        `on_step` is called once per generated token position (e.g. a progress bar's update).
        When every row is an image row (`RowSpec.image`) the rows are decoded in multi-token
        windows (`speculative.decode_image_rows`): forced structure tokens ride along with the
        next sampled token, and `speculative="jacobi"` also drafts `window - 1` code positions
        ahead and verifies them in the same forward (exact: greedy output is unchanged, sampled
        output has the same distribution). Text rows always decode one token per step.
        """
        if speculative not in SPECULATIVE_MODES:
            raise ValueError(f"speculative must be one of {SPECULATIVE_MODES}, got {speculative!r}")
        if rows and all(r.image is not None for r in rows):
            return self._generate_images(prompt, rows, sampling, keys, on_step, speculative, window)
        columns, masks = [], []
        for tokens, active in self.stream(prompt, rows, sampling, keys, max_new_tokens=max_new_tokens):
            columns.append(tokens)
            masks.append(active)
            if on_step is not None:
                on_step()
        if not columns:
            return [[] for _ in rows]
        table = torch.stack(columns, dim=1).tolist()
        return [[tok for tok, m in zip(row, (mask[r] for mask in masks)) if m] for r, row in enumerate(table)]

    @torch.no_grad()
    def _generate_images(
        self,
        prompt: PromptEmbeddings,
        rows: Sequence[RowSpec],
        sampling: SamplingConfig,
        keys: torch.Tensor,
        on_step: Callable[[], None] | None,
        speculative: str,
        window: int,
    ) -> list[list[int]]:
        batch = len(rows)
        total = 2 * batch if sampling.uses_cfg else batch
        if prompt.embeds.shape[0] != total:
            raise ValueError(
                f"{prompt.embeds.shape[0]} prompt rows for {batch} rows"
                + (" with CFG (conditional rows, then as many unconditional ones)" if sampling.uses_cfg else "")
            )
        if keys.shape != (batch,):
            raise ValueError(f"keys must have shape ({batch},), got {tuple(keys.shape)}")
        schedules = [self.vocab.schedule(r.image) for r in rows]
        if speculative == "jacobi":
            width = window
        else:
            width = 1 + max(_longest_forced_run(s) for s in schedules)
        length = prompt.embeds.shape[1] + max(len(s) for s in schedules) + width
        decoder = self._decoder_for(total, length)
        tokens, passes = decode_image_rows(
            decoder, self.vocab, prompt, schedules, sampling, keys.to(self.device),
            draft=speculative == "jacobi", width=width, on_step=on_step,
        )  # fmt: skip
        self.forward_passes += passes
        return tokens


def _longest_forced_run(schedule: ImageSchedule) -> int:
    """Most forced positions in a row (they are fed together with the token before them)."""
    best = run = 0
    for forced in schedule.forced[1:]:
        run = run + 1 if forced >= 0 else 0
        best = max(best, run)
    return best
