"""ILLUME+ causal LM: Qwen2 with the dual vision tower and the mixed projector.

Input images enter the LLM as continuous features laid out exactly like the discrete output
grammar (SPEC-mllm C2): `<start_of_image><start_of_level0>` + semantic rows each closed by
`<end_of_line>` + `<end_of_level0><start_of_level1>` + pixel rows + `<end_of_level1><end_of_image>`,
with projected features where the code tokens would be. The official call style is kept:
`input_ids` hold the sentinel -200 where a prompt said `<image>`, and `images` lists the images in
the order the sentinels appear over the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.qwen2.modeling_qwen2 import Qwen2Model, Qwen2PreTrainedModel
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from illume.model.configuration_illume import ILLUMEQwen2Config
from illume.model.projector import MixedProjector
from illume.model.vision_tower import DualVisionTower, TowerOutput
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX, SPECIAL_IMAGE_TOKENS, image_block_layout

__all__ = ["MultimodalInputs", "IllumeQwen2PreTrainedModel", "IllumeQwen2Model", "IllumeQwen2ForCausalLM"]

ImageList = list[torch.Tensor] | tuple[torch.Tensor, ...] | torch.Tensor


@dataclass
class MultimodalInputs:
    """Merged sequences: `inputs_embeds` (B, T, H); `attention_mask`, `position_ids`, `labels` (B, T)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None


class IllumeQwen2PreTrainedModel(Qwen2PreTrainedModel):
    config_class = ILLUMEQwen2Config
    config: ILLUMEQwen2Config
    _no_split_modules = ["Qwen2DecoderLayer", "Qwen2VLVisionBlock"]


def _config_search_dirs(config: ILLUMEQwen2Config) -> list[Path]:
    """A relative `vq_config` may sit beside the checkpoint's config.json."""
    source = getattr(config, "name_or_path", "") or ""
    return [Path(source)] if source and os.path.isdir(source) else []


def _image_list(images: ImageList) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images tensor must be [N, 3, H, W], got {tuple(images.shape)}")
        return list(images.split(1))
    return list(images)


class IllumeQwen2Model(IllumeQwen2PreTrainedModel, Qwen2Model):
    """The Qwen2 decoder plus `vision_tower` and `mm_projector` when the config names a tower."""

    def __init__(self, config: ILLUMEQwen2Config) -> None:
        super().__init__(config)
        if config.mm_vision_tower is None:
            return
        self.vision_tower = DualVisionTower(config.mm_vision_tower, _config_search_dirs(config))
        in_features = list(config.mm_hidden_size or self.vision_tower.hidden_size)
        if in_features != self.vision_tower.hidden_size:
            raise ValueError(
                f"config.mm_hidden_size {in_features} does not match the vision tower's feature sizes "
                f"{self.vision_tower.hidden_size} (built from {config.mm_vision_tower.get('vq_config')!r})"
            )
        self.mm_projector = MixedProjector(config.mm_projector or {}, in_features, config.hidden_size)
        self.post_init()

    @property
    def has_vision(self) -> bool:
        return hasattr(self, "vision_tower")

    def _special_embeddings(self, device: torch.device) -> torch.Tensor:
        ids = self.config.special_tokens_ids
        if ids is None:
            raise ValueError(
                "config.special_tokens_ids is not set; it must hold the ids of "
                f"{list(SPECIAL_IMAGE_TOKENS)} (see illume.vocab.ImageVocabulary.special_tokens_ids)"
            )
        return self.embed_tokens(torch.tensor(ids, device=device))

    def encode_images(self, images: ImageList) -> list[torch.Tensor]:
        """One embedding block (N_k, H) per image: special-token embeddings and projected features."""
        if not self.has_vision:
            raise ValueError("this model has no vision tower (config.mm_vision_tower is None)")
        return self._image_blocks(self.vision_tower(_image_list(images)))

    @property
    def runs_idle_vision(self) -> bool:
        """Whether a forward without input images must still run the tower and projector.

        In training, data-parallel ranks must run the same modules every step: DDP and ZeRO-2
        expect a gradient for every trainable parameter, and ZeRO-3 gathers parameters in
        forward hooks, collectively. Evaluation and generation never pay for it.
        """
        return self.has_vision and self.training and torch.is_grad_enabled()

    def idle_vision_term(self) -> torch.Tensor:
        """0 × the sum of the tower's and projector's output on the smallest image, a 0-d tensor.

        Adding it to the inputs of the decoder gives every tower/projector parameter a zero
        gradient and runs their modules in the same order as a real image would (before the
        decoder), at the cost of one 16 × 32 image instead of the official 256² dummy per sample.
        """
        (block,) = self._image_blocks(self.vision_tower.encode_placeholder())
        return block.sum() * 0.0

    def _image_blocks(self, tower: TowerOutput) -> list[torch.Tensor]:
        projected = self.mm_projector([torch.cat(tower.semantic), torch.cat(tower.pixel)])
        num_semantic = sum(g.num_semantic for g in tower.grids)
        special = self._special_embeddings(projected.device)
        # Rows of `table`: the special embeddings, then every image's semantic rows, then pixel rows.
        table = torch.cat([special, projected.to(special.dtype)])
        offsets = torch.tensor([len(special), len(special) + num_semantic])
        indices = []
        for grid in tower.grids:
            marker, level = image_block_layout(grid)
            index = marker.clone()
            for lv, count in enumerate((grid.num_semantic, grid.num_pixel)):
                at_level = level == lv
                index[at_level] = offsets[lv] + torch.arange(count)
                offsets[lv] += count
            indices.append(index)
        blocks = table[torch.cat(indices).to(table.device)]
        return list(blocks.split([len(i) for i in indices]))

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: ImageList,
    ) -> MultimodalInputs:
        """Replace every -200 sentinel by its image block; re-pad, truncate and relabel.

        Images are consumed in sentinel order over the batch. A sample without a sentinel may
        bring one placeholder image (the training collator's dummy), which is skipped; any other
        count mismatch is an error. Padding (attention 0) is dropped, merged sequences are cut to
        `config.tokenizer_model_max_length` and re-padded on `config.tokenizer_padding_side`;
        image positions get label -100 and positions count real tokens from 0.
        """
        images = _image_list(images)
        batch, length = input_ids.shape
        device = input_ids.device
        real = (
            attention_mask.bool()
            if attention_mask is not None
            else torch.ones_like(input_ids, dtype=torch.bool)
        )
        is_marker = (input_ids == IMAGE_TOKEN_INDEX) & real
        markers = is_marker.sum(1)
        per_sample = self._images_per_sample(markers, len(images))
        first_image = per_sample.cumsum(0) - per_sample
        marker_image = first_image[:, None] + is_marker.long().cumsum(1) - 1
        used = marker_image[is_marker].tolist()
        blocks = self.encode_images([images[i] for i in used]) if used else []
        idle = self.idle_vision_term() if not used and self.runs_idle_vision else None

        # Span of every input position in the merged sequence: 1 per text token, N_k per sentinel.
        span = real.long()
        if blocks:
            span[is_marker] = torch.tensor([len(b) for b in blocks], device=device)
        end = span.cumsum(1)
        start = end - span
        merged_len = end[:, -1]
        if self.config.tokenizer_model_max_length is not None:
            merged_len = merged_len.clamp(max=self.config.tokenizer_model_max_length)
        total = int(merged_len.max())
        pad_before = (
            total - merged_len
            if self.config.tokenizer_padding_side == "left"
            else torch.zeros_like(merged_len)
        )

        rows = torch.arange(batch, device=device)[:, None].expand(batch, length)
        text = real & ~is_marker
        text_rows, text_pos = rows[text], start[text]
        embed = self.embed_tokens
        sources = [embed(input_ids[text])]
        dest_rows, dest_pos = [text_rows], [text_pos]
        if blocks:
            sizes = torch.tensor([len(b) for b in blocks], device=device)
            block_rows = rows[is_marker].repeat_interleave(sizes)
            within = torch.arange(int(sizes.sum()), device=device) - (
                sizes.cumsum(0) - sizes
            ).repeat_interleave(sizes)
            sources.append(torch.cat(blocks).to(sources[0].dtype))
            dest_rows.append(block_rows)
            dest_pos.append(start[is_marker].repeat_interleave(sizes) + within)
        src = torch.cat(sources)
        dest_row, pos = torch.cat(dest_rows), torch.cat(dest_pos)
        keep = pos < merged_len[dest_row]
        flat = dest_row[keep] * total + pad_before[dest_row[keep]] + pos[keep]
        hidden = src.shape[-1]
        inputs_embeds = (
            src.new_zeros(batch * total, hidden).index_copy(0, flat, src[keep]).view(batch, total, hidden)
        )
        if idle is not None:
            inputs_embeds = inputs_embeds + idle.to(inputs_embeds.dtype)

        slots = torch.arange(total, device=device)[None, :] - pad_before[:, None]
        new_mask = (slots >= 0) & (slots < merged_len[:, None])
        new_labels = None
        if labels is not None:
            new_labels = torch.full((batch * total,), IGNORE_INDEX, dtype=labels.dtype, device=device)
            text_keep = keep[: len(text_rows)]
            new_labels[flat[: int(text_keep.sum())]] = labels[text][text_keep]
            new_labels = new_labels.view(batch, total)
        dtype = attention_mask.dtype if attention_mask is not None else torch.long
        return MultimodalInputs(inputs_embeds, new_mask.to(dtype), slots.clamp(min=0), new_labels)

    @staticmethod
    def _images_per_sample(markers: torch.Tensor, num_images: int) -> torch.Tensor:
        """How many of the images each sample consumes (sentinels, or 1 placeholder when it has none)."""
        if num_images == int(markers.sum()):
            return markers
        with_placeholders = markers.clamp(min=1)
        if num_images == int(with_placeholders.sum()):
            return with_placeholders
        raise ValueError(
            f"{num_images} image(s) given for {int(markers.sum())} <image> marker(s) "
            f"(per sample: {markers.tolist()}); pass one image per marker, plus optionally one "
            "placeholder image for each sample without a marker"
        )


class IllumeQwen2ForCausalLM(IllumeQwen2PreTrainedModel, GenerationMixin):
    """`model` (IllumeQwen2Model) + `lm_head`; the head is tied to the embeddings when the config says so."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: ILLUMEQwen2Config) -> None:
        super().__init__(config)
        self.model = IllumeQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, allow_missing_weights: bool = False, **kwargs
    ):
        """transformers' loader, but a checkpoint lacking weights is an error, not a random init.

        A released folder must fill every parameter (the vision tower included); pass
        `allow_missing_weights=True` only when building a model whose new parts are trained next.
        """
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs
        )
        missing = sorted(info["missing_keys"])
        if missing and not allow_missing_weights:
            shown = ", ".join(missing[:8]) + (f" … ({len(missing)} in all)" if len(missing) > 8 else "")
            raise ValueError(f"{pretrained_model_name_or_path}: checkpoint has no weights for {shown}")
        return (model, info) if want_info else model

    def get_model(self) -> IllumeQwen2Model:
        return self.model

    def encode_images(self, images: ImageList) -> list[torch.Tensor]:
        return self.model.encode_images(images)

    def _merge_images(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: ImageList | None,
        inputs_embeds: torch.Tensor | None,
    ) -> MultimodalInputs | None:
        if images is None:
            if input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any()):
                raise ValueError(
                    f"input_ids contain <image> markers ({IMAGE_TOKEN_INDEX}) but no images were given"
                )
            return None
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("images need input_ids with <image> markers, not inputs_embeds")
        return self.model.prepare_multimodal_inputs(input_ids, attention_mask, labels, images)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images: ImageList | None = None,
        image_sizes: list | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """The official signature: `images` are [1,3,H,W] tensors in [-1,1], one per -200 in `input_ids`.

        `image_sizes` is accepted for call compatibility and unused (every size is read from the images).
        """
        merged = self._merge_images(input_ids, attention_mask, labels, images, inputs_embeds)
        if merged is not None:
            input_ids = None
            inputs_embeds, attention_mask = merged.inputs_embeds, merged.attention_mask
            position_ids, labels = merged.position_ids, merged.labels
        elif self.model.runs_idle_vision:
            idle = self.model.idle_vision_term()
            if inputs_embeds is None:
                inputs_embeds, input_ids = self.model.embed_tokens(input_ids), None
            inputs_embeds = inputs_embeds + idle.to(inputs_embeds.dtype)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: ImageList | None = None,
        image_sizes: list | None = None,
        **kwargs,
    ):
        """As the official: prompts (with images merged in) go in as embeddings, so only new tokens return."""
        if "inputs_embeds" in kwargs:
            return super().generate(inputs, **kwargs)
        if inputs is None:
            raise ValueError("generate needs prompt ids (`inputs`)")
        attention_mask = kwargs.pop("attention_mask", None)
        merged = self._merge_images(inputs, attention_mask, None, images, None)
        if merged is None:
            embeds = self.model.embed_tokens(inputs)
            mask = attention_mask if attention_mask is not None else torch.ones_like(inputs)
        else:
            embeds, mask = merged.inputs_embeds, merged.attention_mask
        return super().generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
