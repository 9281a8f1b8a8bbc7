"""The image grammar, per-level sampling and CFG as transformers logits processors.

For users of `model.generate(...)`; `GenerationEngine` is the fast path. Every processor keeps
per-row state (rows may have different grids), works for batches, and touches only the id
ranges it needs (slices, no vocabulary-wide masks rebuilt in Python).

Rows generate exactly one image block each, right after a prompt ending with the resolution tag
(text-to-image / editing). `prompt_length` is the number of prompt columns in the `input_ids`
that `generate` passes to processors: 0 when generating from `inputs_embeds` (which is how
`IllumeQwen2ForCausalLM.generate` runs), else the padded prompt length. Typical use::

    processors = LogitsProcessorList([
        UnconditionalGuidanceProcessor(model, uncond_ids, uncond_mask, vocab, grids, cfg_scale, images=...),
        ImageGrammarProcessor(vocab, grids),
        LevelSamplingWarper(vocab, grids, sampling),
    ])
    model.generate(ids, images=..., logits_processor=processors, do_sample=True,
                   temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max(len) + 1)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache, LogitsProcessor

from illume.inference.sampling import TEXT, SamplingConfig, cfg_combine
from illume.inference.schedule import ImagePlan, image_plan
from illume.vocab import IMAGE_TOKEN_INDEX, ImageGrid, ImageVocabulary

__all__ = ["ImageGrammarProcessor", "LevelSamplingWarper", "UnconditionalGuidanceProcessor"]


class _PlanRows:
    """Which position of its image block each row is at, from the number of generated columns."""

    def __init__(
        self, vocab: ImageVocabulary, grids: ImageGrid | Sequence[ImageGrid], prompt_length: int
    ) -> None:
        self.vocab = vocab
        self.grids = [grids] if isinstance(grids, ImageGrid) else list(grids)
        self.plans: list[ImagePlan] = [image_plan(vocab, g) for g in self.grids]
        self.prompt_length = prompt_length

    def position(self, input_ids: torch.Tensor) -> int:
        if input_ids.shape[0] != len(self.plans):
            raise ValueError(f"{input_ids.shape[0]} rows in generate but {len(self.plans)} grids were given")
        return input_ids.shape[1] - self.prompt_length

    def level_range(self, phase: int) -> tuple[int, int]:
        return self.vocab.level_range(phase - 1)


class ImageGrammarProcessor(LogitsProcessor):
    """Allow only what the image grammar allows: forced markers, or codes of the current level.

    After the block, `<|im_end|>` is forced so `generate` stops (pass it as `eos_token_id`).
    """

    def __init__(
        self, vocab: ImageVocabulary, grids: ImageGrid | Sequence[ImageGrid], prompt_length: int = 0
    ):
        self.rows = _PlanRows(vocab, grids, prompt_length)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        pos = self.rows.position(input_ids)
        out = torch.full_like(scores, -math.inf)
        for r, plan in enumerate(self.rows.plans):
            if pos >= len(plan):
                out[r, self.rows.vocab.end_of_text] = 0.0
            elif plan.forced[pos] >= 0:
                out[r, plan.forced[pos]] = 0.0
            else:
                lo, hi = self.rows.level_range(plan.phase[pos])
                out[r, lo:hi] = scores[r, lo:hi]
        return out


class LevelSamplingWarper(LogitsProcessor):
    """Temperature, top-k and top-p of the level being sampled, within that level's id range.

    Run `generate` with neutral warpers (temperature 1, top_k 0, top_p 1), or set
    `sampling.official_double_sampling` and pass the text values to `generate` to reproduce the
    official scripts.
    """

    def __init__(
        self,
        vocab: ImageVocabulary,
        grids: ImageGrid | Sequence[ImageGrid],
        sampling: SamplingConfig,
        prompt_length: int = 0,
    ):
        self.rows = _PlanRows(vocab, grids, prompt_length)
        self.sampling = sampling

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        pos = self.rows.position(input_ids)
        scores = scores.clone()
        for r, plan in enumerate(self.rows.plans):
            if pos >= len(plan) or plan.forced[pos] >= 0:
                continue
            params = self.sampling.phase(plan.phase[pos])
            lo, hi = self.rows.level_range(plan.phase[pos])
            values = scores[r, lo:hi] / params.temperature
            if 0 < params.top_k < values.numel():
                kth = torch.topk(values, params.top_k).values[-1]
                values = values.masked_fill(values < kth, -math.inf)
            if params.top_p < 1:
                ordered, order = torch.sort(values, descending=True)
                probs = torch.softmax(ordered, -1)
                drop = (torch.cumsum(probs, -1) - probs) >= params.top_p
                drop[0] = False
                values = values.index_put((order[drop],), torch.tensor(-math.inf, device=values.device))
            scores[r, lo:hi] = values
        return scores


class UnconditionalGuidanceProcessor(LogitsProcessor):
    """Classifier-free guidance with a KV-cached unconditional branch, applied at code positions.

    The unconditional prompts (`uncond_ids` with -200 markers, left-padded, one per row, plus
    their `images` for editing) are run once, then fed each generated token. This is a second
    forward per step; `GenerationEngine` batches both branches into one instead.
    """

    def __init__(
        self,
        model: nn.Module,
        uncond_ids: torch.Tensor,
        uncond_attention_mask: torch.Tensor,
        vocab: ImageVocabulary,
        grids: ImageGrid | Sequence[ImageGrid],
        guidance_scale: float,
        *,
        images: Sequence[torch.Tensor] | None = None,
        prompt_length: int = 0,
    ):
        self.rows = _PlanRows(vocab, grids, prompt_length)
        self.model = model
        self.scale = guidance_scale
        self.ids = uncond_ids
        self.mask = uncond_attention_mask
        self.images = list(images) if images else None
        self.cache: DynamicCache | None = None
        self.fed = 0
        self.logits: torch.Tensor | None = None
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)[:, -embeds.shape[1] :]
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_kw: self.cache},
        )
        return out.logits[:, -1].float()

    @torch.no_grad()
    def _advance(self, input_ids: torch.Tensor) -> None:
        embed = self.model.get_input_embeddings()
        if self.cache is None:
            self.cache = DynamicCache()
            ids, mask = self.ids.to(input_ids.device), self.mask.to(input_ids.device)
            if self.images is not None and bool((ids == IMAGE_TOKEN_INDEX).any()):
                merged = self.model.get_model().prepare_multimodal_inputs(ids, mask, None, self.images)
                embeds, mask = merged.inputs_embeds, merged.attention_mask.long()
            else:
                embeds = embed(ids)
            self.mask = mask
            self.logits = self._run(embeds, mask)
        generated = input_ids[:, self.rows.prompt_length :]
        if generated.shape[1] > self.fed:
            new = generated[:, self.fed :]
            self.mask = torch.cat([self.mask, torch.ones_like(new)], dim=1)
            self.logits = self._run(embed(new), self.mask)
            self.fed = generated.shape[1]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        pos = self.rows.position(input_ids)
        sampled = [r for r, plan in enumerate(self.rows.plans) if pos < len(plan) and plan.forced[pos] < 0]
        if self.scale == 1.0:
            return scores
        self._advance(input_ids)
        if not sampled:
            return scores
        scores = scores.clone()
        for r in sampled:
            phase = self.rows.plans[r].phase[pos]
            if phase == TEXT:
                continue
            lo, hi = self.rows.level_range(phase)
            scores[r, lo:hi] = cfg_combine(
                scores[r : r + 1, lo:hi], self.logits[r : r + 1, lo:hi], self.scale
            )[0]
        return scores
