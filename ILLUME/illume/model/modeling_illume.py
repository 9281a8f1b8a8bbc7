"""ILLUME+ causal LM: Qwen2 with the dual vision tower and the mixed projector.

Input images enter the LLM as continuous features laid out exactly like the discrete output
grammar (SPEC-mllm C2): `<start_of_image><start_of_level0>` + semantic rows each closed by
`<end_of_line>` + `<end_of_level0><start_of_level1>` + pixel rows + `<end_of_level1><end_of_image>`,
with projected features where the code tokens would be.

Two call styles reach the same embeddings:

* transformers style (what `IllumeProcessor` returns): `input_ids` already hold every image block,
  with one `<|image_pad|>` (`config.image_token_id`) per feature, and `pixel_values` list the
  images; the features are written over the placeholders with `masked_scatter` after checking the
  counts, so the sequence length never changes (as in transformers' Qwen2-VL and Janus);
* the official style: `input_ids` hold the sentinel -200 where a prompt said `<image>` and
  `images` list the images in sentinel order over the batch. One adapter
  (`prepare_multimodal_inputs`) expands the sentinels to the blocks above — re-padding,
  truncating and relabelling once — and then fills the placeholders the same way.
"""

from __future__ import annotations

import json
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
from vision_tokenizer.models.configuration_dualvitok import official_config_name

from illume.model.configuration_illume import IMAGE_PLACEHOLDER, VQ_CONFIG_FILE, IllumeQwen2Config
from illume.model.projector import MixedProjector
from illume.model.vision_tower import DualVisionTower, TowerOutput
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX, SPECIAL_IMAGE_TOKENS, ImageGrid, image_block_layout

__all__ = [
    "MultimodalInputs",
    "image_block_ids",
    "placeholder_id_from_files",
    "IllumeQwen2PreTrainedModel",
    "IllumeQwen2Model",
    "IllumeQwen2ForCausalLM",
]

ImageList = list[torch.Tensor] | tuple[torch.Tensor, ...] | torch.Tensor
# `from_pretrained` keyword arguments that also steer where the config is read from.
_CONFIG_LOADING_KWARGS = ("cache_dir", "revision", "local_files_only", "token", "subfolder", "force_download")


@dataclass
class MultimodalInputs:
    """Merged sequences: `inputs_embeds` (B, T, H); `attention_mask`, `position_ids`, `labels` (B, T)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    labels: torch.Tensor | None


def placeholder_id_from_files(folder: Path) -> int | None:
    """The id of `<|image_pad|>` read from a folder's tokenizer files (JSON), or None."""
    added = folder / "added_tokens.json"
    if added.is_file():
        table = json.loads(added.read_text(encoding="utf-8"))
        if IMAGE_PLACEHOLDER in table:
            return int(table[IMAGE_PLACEHOLDER])
    full = folder / "tokenizer.json"
    if full.is_file():
        for token in json.loads(full.read_text(encoding="utf-8")).get("added_tokens", []):
            if token.get("content") == IMAGE_PLACEHOLDER:
                return int(token["id"])
    return None


def image_block_ids(
    grid: ImageGrid, special_tokens_ids: list[int], placeholder: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of one image block — the markers of the vocabulary's layout, `placeholder` at every
    feature position (0 when unknown: those embeddings are overwritten anyway) — and its feature mask."""
    marker, _ = image_block_layout(grid)
    special = torch.tensor(special_tokens_ids, dtype=torch.long)
    is_feature = marker < 0
    block = torch.where(is_feature, placeholder if placeholder is not None else 0, special[marker.clamp(min=0)])
    return block, is_feature


class IllumeQwen2PreTrainedModel(Qwen2PreTrainedModel):
    config_class = IllumeQwen2Config
    config: IllumeQwen2Config
    _no_split_modules = ["Qwen2DecoderLayer", "Qwen2VLVisionBlock"]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *args,
        dualvitok_config=None,
        allow_missing_weights: bool = False,
        **kwargs,
    ):
        """transformers' loader, plus what an ILLUME+ folder needs, and no random init of missing weights.

        The tower's DualViTok architecture is read here (never by a constructor): an official name
        resolves to the configs shipped in `vision_tokenizer`; a file named by the folder's
        config.json is read as JSON from the folder — a `.py` there is refused, never executed.
        `dualvitok_config` is the caller's own config for checkpoints whose `vq_config` does not
        resolve (this one may be a Python file: the caller chose to run it).
        A released folder must fill every parameter (the vision tower included); pass
        `allow_missing_weights=True` only when building a model whose new parts are trained next.
        """
        config = kwargs.pop("config", None)
        if not isinstance(config, IllumeQwen2Config):
            options = {k: kwargs[k] for k in _CONFIG_LOADING_KWARGS if k in kwargs}
            config = IllumeQwen2Config.from_pretrained(pretrained_model_name_or_path, **options)
        folder = Path(pretrained_model_name_or_path)
        local = folder.is_dir()
        config.resolve_dualvitok([folder] if local else [], explicit=dualvitok_config)
        if getattr(config, "image_token_id", None) is None and local:
            config.image_token_id = placeholder_id_from_files(folder)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *args, config=config, output_loading_info=True, **kwargs
        )
        missing = sorted(info["missing_keys"])
        if missing and not allow_missing_weights:
            shown = ", ".join(missing[:8]) + (f" … ({len(missing)} in all)" if len(missing) > 8 else "")
            raise ValueError(f"{pretrained_model_name_or_path}: checkpoint has no weights for {shown}")
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' writer; a DualViTok architecture that no official name covers goes beside
        config.json (as `VQ_CONFIG_FILE`, or the JSON name the folder already used), so the saved
        folder loads anywhere."""
        tower = self.config.mm_vision_tower
        source = tower.get("vq_config") if tower else None
        if isinstance(source, (str, os.PathLike)) and official_config_name(source) is None:
            name = str(source)
            if Path(name).suffix != ".json" or Path(name).name != name:
                name = VQ_CONFIG_FILE
                self.config.mm_vision_tower = {**tower, "vq_config": name}
            out = Path(save_directory)
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_text(json.dumps(self.config.dualvitok.to_vq_model(), indent=2) + "\n")
        return super().save_pretrained(save_directory, *args, **kwargs)


def _image_list(images: ImageList) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images tensor must be [N, 3, H, W], got {tuple(images.shape)}")
        return list(images.split(1))
    return list(images)


class IllumeQwen2Model(IllumeQwen2PreTrainedModel, Qwen2Model):
    """The Qwen2 decoder plus `vision_tower` and `mm_projector` when the config names a tower."""

    def __init__(self, config: IllumeQwen2Config) -> None:
        super().__init__(config)
        if config.mm_vision_tower is None:
            return
        dualvitok = config.dualvitok
        if dualvitok is None:
            raise ValueError(
                f"mm_vision_tower.vq_config {config.mm_vision_tower.get('vq_config')!r} names a file, and "
                "constructors read no files: load the folder with from_pretrained, or give the architecture "
                "(a vq_model dict, an official config name, or from_pretrained(..., dualvitok_config=...))"
            )
        self.vision_tower = DualVisionTower(config.vision_tower_config, dualvitok)
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

    # ------------------------------------------------------------------ image features
    def _features(self, tower: TowerOutput) -> torch.Tensor:
        """Projected features [N, H] in block order: image by image, semantic rows then pixel rows."""
        projected = self.mm_projector([torch.cat(tower.semantic), torch.cat(tower.pixel)])
        semantic_at, pixel_at = 0, sum(g.num_semantic for g in tower.grids)
        order = []
        for grid in tower.grids:
            order += [torch.arange(semantic_at, semantic_at + grid.num_semantic),
                      torch.arange(pixel_at, pixel_at + grid.num_pixel)]  # fmt: skip
            semantic_at += grid.num_semantic
            pixel_at += grid.num_pixel
        return projected[torch.cat(order).to(projected.device)]

    def image_features(self, images: ImageList) -> tuple[torch.Tensor, list[ImageGrid]]:
        """Features of every image (see `_features`) and the images' token grids."""
        if not self.has_vision:
            raise ValueError("this model has no vision tower (config.mm_vision_tower is None)")
        tower = self.vision_tower(_image_list(images))
        return self._features(tower), tower.grids

    def encode_images(self, images: ImageList) -> list[torch.Tensor]:
        """One embedding block (N_k, H) per image, markers and features (the official `encode_images`)."""
        features, grids = self.image_features(images)
        blocks = [self.image_block_ids(grid) for grid in grids]
        device = features.device
        ids = torch.cat([ids for ids, _ in blocks]).to(device)
        is_feature = torch.cat([mask for _, mask in blocks]).to(device)
        embeds = self.scatter_features(self.embed_tokens(ids), is_feature, features)
        return list(embeds.split([len(ids) for ids, _ in blocks]))

    def image_block_ids(self, grid: ImageGrid) -> tuple[torch.Tensor, torch.Tensor]:
        """This model's ids of one image block and its feature mask (see `image_block_ids`)."""
        ids = self.config.special_tokens_ids
        if ids is None:
            raise ValueError(
                "config.special_tokens_ids is not set; it must hold the ids of "
                f"{list(SPECIAL_IMAGE_TOKENS)} (see illume.vocab.ImageVocabulary.special_tokens_ids)"
            )
        return image_block_ids(grid, ids, getattr(self.config, "image_token_id", None))

    @staticmethod
    def scatter_features(embeds: torch.Tensor, is_feature: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Write `features` over the feature positions (row-major order) once the counts agree."""
        count = int(is_feature.sum())
        if count != features.shape[0]:
            raise ValueError(
                f"input_ids hold {count} image placeholder token(s) but the images give "
                f"{features.shape[0]} feature(s); expand each <image> with the processor of this model"
            )
        return embeds.masked_scatter(is_feature[..., None].expand_as(embeds), features.to(embeds.dtype))

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
        embeddings and the decoder), at the cost of one 16 × 32 image instead of the official
        256² dummy per sample.
        """
        return self._features(self.vision_tower.encode_placeholder()).sum() * 0.0

    # ------------------------------------------------------------------ the two call styles
    def merge_inputs(
        self,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: ImageList | None,
        inputs_embeds: torch.Tensor | None,
    ) -> MultimodalInputs | None:
        """Embeddings with the images in them, or None when there are no images."""
        if images is None:
            if input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any()):
                raise ValueError(
                    f"input_ids contain <image> markers ({IMAGE_TOKEN_INDEX}) but no images were given"
                )
            return None
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("images need input_ids (with <image> markers or placeholders), not inputs_embeds")
        placeholder = getattr(self.config, "image_token_id", None)
        expanded = placeholder is not None and bool((input_ids == placeholder).any())
        if bool((input_ids == IMAGE_TOKEN_INDEX).any()) or not expanded:
            return self.prepare_multimodal_inputs(input_ids, attention_mask, labels, images)
        features, _ = self.image_features(images)
        embeds = self.scatter_features(self.embed_tokens(input_ids), input_ids == placeholder, features)
        return MultimodalInputs(embeds, attention_mask, position_ids, labels)

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor | None,
        images: ImageList,
    ) -> MultimodalInputs:
        """The official-style adapter: expand every -200 sentinel to its image block; re-pad, truncate, relabel.

        Images are consumed in sentinel order over the batch. A sample without a sentinel may
        bring one placeholder image (the training collator's dummy), which is skipped; any other
        count mismatch is an error. Padding (attention 0) is dropped, expanded sequences are cut to
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
        features, grids = self.image_features([images[i] for i in used]) if used else (None, [])
        idle = self.idle_vision_term() if not used and self.runs_idle_vision else None
        blocks = [self.image_block_ids(grid) for grid in grids]

        # Span of every input position in the expanded sequence: 1 per text token, N_k per sentinel.
        span = real.long()
        if blocks:
            span[is_marker] = torch.tensor([len(ids) for ids, _ in blocks], device=device)
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
        source_ids = [input_ids[text]]
        source_features = [torch.zeros_like(text_pos, dtype=torch.bool)]
        dest_rows, dest_pos = [text_rows], [text_pos]
        if blocks:
            sizes = torch.tensor([len(ids) for ids, _ in blocks], device=device)
            within = torch.arange(int(sizes.sum()), device=device) - (sizes.cumsum(0) - sizes).repeat_interleave(
                sizes
            )
            source_ids.append(torch.cat([ids for ids, _ in blocks]).to(device))
            source_features.append(torch.cat([mask for _, mask in blocks]).to(device))
            dest_rows.append(rows[is_marker].repeat_interleave(sizes))
            dest_pos.append(start[is_marker].repeat_interleave(sizes) + within)
        src_ids, src_features = torch.cat(source_ids), torch.cat(source_features)
        dest_row, pos = torch.cat(dest_rows), torch.cat(dest_pos)
        keep = pos < merged_len[dest_row]
        flat = dest_row[keep] * total + pad_before[dest_row[keep]] + pos[keep]
        merged_ids = input_ids.new_zeros(batch * total).index_copy(0, flat, src_ids[keep]).view(batch, total)
        is_feature = (
            torch.zeros(batch * total, dtype=torch.bool, device=device)
            .index_copy(0, flat, src_features[keep])
            .view(batch, total)
        )
        inputs_embeds = self.embed_tokens(merged_ids)
        if features is not None:
            inputs_embeds = self.scatter_features(inputs_embeds, is_feature, features[keep[src_features]])
        if idle is not None:
            inputs_embeds = inputs_embeds + idle.to(inputs_embeds.dtype)

        slots = torch.arange(total, device=device)[None, :] - pad_before[:, None]
        new_mask = (slots >= 0) & (slots < merged_len[:, None])
        inputs_embeds = inputs_embeds * new_mask[..., None].to(inputs_embeds.dtype)
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

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: ImageList | None = None,
        images: ImageList | None = None,
        **kwargs,
    ):
        """Qwen2's forward with images (`pixel_values`, or the official `images`) merged in."""
        merged = self.merge_inputs(
            input_ids, attention_mask, position_ids, None, _one_of(pixel_values, images), inputs_embeds
        )
        if merged is not None:
            input_ids, inputs_embeds = None, merged.inputs_embeds
            attention_mask, position_ids = merged.attention_mask, merged.position_ids
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


def _one_of(pixel_values: ImageList | None, images: ImageList | None) -> ImageList | None:
    if pixel_values is not None and images is not None:
        raise ValueError("pass the images once: pixel_values (processor output) or images (official call)")
    return pixel_values if pixel_values is not None else images


class IllumeQwen2ForCausalLM(IllumeQwen2PreTrainedModel, GenerationMixin):
    """`model` (IllumeQwen2Model) + `lm_head`; the head is tied to the embeddings when the config says so."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: IllumeQwen2Config) -> None:
        super().__init__(config)
        self.model = IllumeQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self) -> IllumeQwen2Model:
        return self.model

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
        pixel_values: ImageList | None = None,
        images: ImageList | None = None,
        image_sizes: list | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Images as `pixel_values` (processor output, placeholders in `input_ids`) or as the official
        `images` ([1,3,H,W] tensors in [-1,1], one per -200 in `input_ids`).

        `image_sizes` is accepted for call compatibility and unused (every size is read from the images).
        """
        merged = self.model.merge_inputs(
            input_ids, attention_mask, position_ids, labels, _one_of(pixel_values, images), inputs_embeds
        )
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
        """transformers' generate; the official call (`-200` sentinels + `images`) goes in as merged
        embeddings and, as in the official code, returns only the new tokens."""
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        official = images is not None or (ids is not None and bool((ids == IMAGE_TOKEN_INDEX).any()))
        if "inputs_embeds" in kwargs or not official:
            return super().generate(inputs, **kwargs)
        kwargs.pop("input_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        merged = self.model.merge_inputs(ids, attention_mask, None, None, images, None)
        if merged is None:
            embeds = self.model.embed_tokens(ids)
            mask = attention_mask if attention_mask is not None else torch.ones_like(ids)
        else:
            embeds, mask = merged.inputs_embeds, merged.attention_mask
        return super().generate(inputs_embeds=embeds, attention_mask=mask, **kwargs)
