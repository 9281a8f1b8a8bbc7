"""`IllumeForConditionalGeneration`: the transformers-facing ILLUME+ class, with Janus-style image generation.

It is `IllumeQwen2ForCausalLM` (same weights, same config.json) plus what a transformers user expects
of a unified model: `generate(**inputs)` answers in text, and
`generate(**inputs, generation_mode="image", guidance_scale=..., negative_input_ids=...)` returns the
ids of one image block per row (`<start_of_image>` … `<end_of_image>`, under the grammar), decoded
by the same `GenerationEngine` as `IllumePipeline`. It lives here, not in `illume.model`, because a
model knows nothing of how it is used (the engine is `illume.inference`); the Auto classes map to it
once `illume.hf` is imported (`illume.register()`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

from illume.hf.processing_illume import IllumeImageProcessor
from illume.inference.engine import GenerationEngine, PromptEmbeddings, RowSpec
from illume.inference.sampling import SamplingConfig, row_keys
from illume.model import IllumeQwen2Config, IllumeQwen2ForCausalLM
from illume.vocab import RESOLUTION_TAG_SIZES, ImageGrid, ImageVocabulary, extension_tokens

__all__ = ["IllumeForConditionalGeneration", "vocabulary_from_config", "GENERATION_MODES"]

GENERATION_MODES = ("text", "image")
_SAVED_ARCHITECTURE = IllumeQwen2ForCausalLM.__name__


def vocabulary_from_config(config: IllumeQwen2Config) -> ImageVocabulary:
    """The id layout without a tokenizer: the extension tokens follow `<start_of_image>` in the
    official order (formats.md §1); `<|endoftext|>` (Qwen's bos and pad) and `<|im_end|>` (eos)."""
    if config.special_tokens_ids is None or config.dualvitok is None:
        raise ValueError("image generation needs config.special_tokens_ids and the DualViTok architecture")
    sizes = (
        int(config.dualvitok.semantic_quantizer["codebook_size"]),
        int(config.dualvitok.pixel_quantizer["codebook_size"]),
    )
    first = config.special_tokens_ids[0]
    at = {token: first + i for i, token in enumerate(extension_tokens((0, 0)))}
    structure = len(at)
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    return ImageVocabulary(
        start_of_image=at["<start_of_image>"],
        end_of_image=at["<end_of_image>"],
        end_of_line=at["<end_of_line>"],
        start_of_levels=tuple(at[f"<start_of_level{lv}>"] for lv in range(2)),
        end_of_levels=tuple(at[f"<end_of_level{lv}>"] for lv in range(2)),
        height_tags=tuple(at[f"<height_{s}>"] for s in RESOLUTION_TAG_SIZES),
        width_tags=tuple(at[f"<width_{s}>"] for s in RESOLUTION_TAG_SIZES),
        level_offsets=(first + structure, first + structure + sizes[0]),
        codebook_sizes=sizes,
        end_of_text=int(eos),
        pad=int(config.bos_token_id),
    )


class IllumeForConditionalGeneration(IllumeQwen2ForCausalLM):
    """`IllumeQwen2ForCausalLM` with `generate(..., generation_mode="text" | "image")`."""

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Saved folders stay origin format (config.json names `IllumeQwen2ForCausalLM`, as released),
        plus the image processor's settings, so `AutoImageProcessor` loads the folder too."""
        out = super().save_pretrained(save_directory, *args, **kwargs)
        IllumeImageProcessor.from_model_config(self.config).save_pretrained(save_directory)
        path = Path(save_directory) / "config.json"
        values = json.loads(path.read_text(encoding="utf-8"))
        if values.get("architectures") != [_SAVED_ARCHITECTURE]:
            values["architectures"] = [_SAVED_ARCHITECTURE]
            path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return out

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_mode: str = "text", **kwargs):
        if generation_mode not in GENERATION_MODES:
            raise ValueError(f"generation_mode must be one of {GENERATION_MODES}, got {generation_mode!r}")
        if generation_mode == "text":
            return super().generate(inputs, **kwargs)
        return self.generate_image_codes(inputs if inputs is not None else kwargs.pop("input_ids", None), **kwargs)

    def generate_image_codes(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: list[torch.Tensor] | None = None,
        *,
        negative_input_ids: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        negative_pixel_values: list[torch.Tensor] | None = None,
        guidance_scale: float = 1.0,
        temperature: float = 1.0,
        top_k: int = 2048,
        top_p: float = 1.0,
        do_sample: bool = True,
        seed: int | None = None,
        **sampling_options,
    ) -> torch.LongTensor:
        """One image block per prompt row: (rows, block length) ids from `<start_of_image>` to `<end_of_image>`.

        Each prompt ends with the resolution tag `<height_H><width_W>` (the official generation
        prompt); the grid follows from it. `guidance_scale` > 1 needs the unconditional prompt
        (`negative_input_ids`, e.g. "Generate a random image of …"; for editing the reconstruction
        prompt with the same image as `negative_pixel_values`). `sampling_options`: the
        `semantic_*` / `pixel_*` temperature, top-k and top-p of `SamplingConfig.create`. Seeds:
        row i uses `seed + i` (default: drawn from torch's global generator).
        """
        vocab = vocabulary_from_config(self.config)
        grid = self._grid_of(input_ids, vocab)
        sampling = SamplingConfig.create(
            temperature, top_k, top_p, cfg_scale=guidance_scale, do_sample=do_sample, **sampling_options
        )
        cond = self._prompt(input_ids, attention_mask, pixel_values)
        if sampling.uses_cfg:
            if negative_input_ids is None:
                raise ValueError(
                    "guidance_scale != 1 needs negative_input_ids (the unconditional prompt of each row)"
                )
            uncond = self._prompt(negative_input_ids, negative_attention_mask, negative_pixel_values)
            cond = _stack_left_padded(cond, uncond)
        rows = input_ids.shape[0]
        first = int(torch.randint(0, 2**31 - 1, ())) if seed is None else int(seed)
        keys = row_keys([torch.Generator().manual_seed(first + i) for i in range(rows)])
        engine = GenerationEngine(self, vocab, eos_ids=[vocab.end_of_text, vocab.pad])
        out = engine.generate(cond, [RowSpec(image=grid)] * rows, sampling, keys)
        return torch.tensor(out, dtype=torch.long, device=input_ids.device)

    def _prompt(
        self, ids: torch.Tensor, mask: torch.Tensor | None, pixel_values: list[torch.Tensor] | None
    ) -> PromptEmbeddings:
        mask = mask if mask is not None else torch.ones_like(ids)
        merged = self.model.merge_inputs(ids, mask, None, None, pixel_values, None)
        if merged is None:
            return PromptEmbeddings(self.model.embed_tokens(ids), mask)
        return PromptEmbeddings(merged.inputs_embeds, merged.attention_mask)

    @staticmethod
    def _grid_of(input_ids: torch.Tensor, vocab: ImageVocabulary) -> ImageGrid:
        tags = {tuple(row[-2:]) for row in input_ids.tolist()}
        if len(tags) != 1:
            raise ValueError("every prompt row must end with the same resolution tag <height_H><width_W>")
        height, width = next(iter(tags))
        if height not in vocab.height_tags or width not in vocab.width_tags:
            raise ValueError(
                "an image-generation prompt ends with its resolution tag <height_H><width_W> "
                "(the official generation prompt); found other tokens at the end"
            )
        size = RESOLUTION_TAG_SIZES
        return ImageGrid.for_resolution(size[vocab.height_tags.index(height)], size[vocab.width_tags.index(width)])


def _stack_left_padded(cond: PromptEmbeddings, uncond: PromptEmbeddings) -> PromptEmbeddings:
    """Conditional rows then unconditional rows, left-padded to one length (what the engine takes)."""
    length = max(cond.embeds.shape[1], uncond.embeds.shape[1])

    def widen(p: PromptEmbeddings) -> tuple[torch.Tensor, torch.Tensor]:
        extra = length - p.embeds.shape[1]
        embeds = torch.nn.functional.pad(p.embeds, (0, 0, extra, 0))
        return embeds, torch.nn.functional.pad(p.attention_mask, (extra, 0))

    (ce, cm), (ue, um) = widen(cond), widen(uncond)
    return PromptEmbeddings(torch.cat([ce, ue]), torch.cat([cm.to(um.dtype), um]))


AutoModelForCausalLM.register(IllumeQwen2Config, IllumeForConditionalGeneration, exist_ok=True)
AutoModelForImageTextToText.register(IllumeQwen2Config, IllumeForConditionalGeneration, exist_ok=True)
