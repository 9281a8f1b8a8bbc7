"""The MLLM training datasets: understanding, pure text, text-to-image and single-turn editing.

A record (SPEC-mllm C8) is a conversation plus image file names. Records that went through
codebook inference also carry, per image, its code grids (`image_embed_inds`) and anchor
(`matched_ratios`); an `<image>` in a human turn is then an *input* image (prefixed with its
resolution tag) and an `<image>` in a gpt turn is a *target* written out as its resolution tag
and code tokens. Images are matched to `<image>` markers one occurrence at a time, in order
(the official `re.sub` replaced every marker of a turn at once, mis-assigning several images).

Classifier-free-guidance text dropout follows the official datasets: with probability
`cfg_text_dropout_probability` a text-to-image prompt becomes the unconditional one and an
editing sample becomes a reconstruction of its source. The draw depends only on (seed, epoch,
dataset, index), so a resumed run sees the same samples as an uninterrupted one.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset
from vision_tokenizer.data.image_io import ImageLoadError, load_image
from vision_tokenizer.data.records import record_images

from illume.data.conversation import USER, ChatTemplate
from illume.data.errors import MalformedRecord, RecordErrorPolicy, RecordLocation
from illume.data.images import ImagePreprocessor
from illume.data.preprocess import conversation_messages, tokenize_conversation
from illume.data.records import RecordSource
from illume.vocab import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    RESOLUTION_TAG_SIZES,
    ImageGrid,
    image_block_text,
    resolution_tag,
)

__all__ = [
    "RESOLUTION_TAG_FIELD",
    "UNCONDITIONAL_T2I_PROMPT",
    "RECONSTRUCTION_PROMPT",
    "PreparedRecord",
    "DefaultDataset",
    "Text2ImageDataset",
    "SingleTurnEditDataset",
    "DATASET_TYPES",
    "MixedDataset",
]

logger = logging.getLogger(__name__)

RESOLUTION_TAG_FIELD = "{resolution_tag}"
UNCONDITIONAL_T2I_PROMPT = "Generate a random image of {resolution_tag}\n"
RECONSTRUCTION_PROMPT = "<image>\nReconstruct the image according to the given image\n"


@dataclass
class PreparedRecord:
    """A record turned into template messages plus the input images it needs (not yet loaded)."""

    messages: list[tuple[int, str]]
    input_images: list[Path] = field(default_factory=list)
    target_positions: int = 0  # tag + image block of every code-token target
    text_chars: int = 0  # characters of the conversation text, image markers excluded

    @property
    def has_images(self) -> bool:
        return bool(self.input_images) or self.target_positions > 0


def _check_codes(record: Mapping[str, Any], location: RecordLocation, count: int) -> None:
    """`image_embed_inds` / `matched_ratios` must describe `count` images whose grids fit their tags."""
    embeds, ratios = record.get("image_embed_inds"), record.get("matched_ratios")
    if not isinstance(embeds, list) or not isinstance(ratios, list):
        raise MalformedRecord(location, "image_embed_inds and matched_ratios must both be lists")
    if not len(embeds) == len(ratios) == count:
        raise MalformedRecord(
            location,
            f"{count} image(s) but {len(embeds)} image_embed_inds and {len(ratios)} matched_ratios entries",
        )
    for k, (codes, ratio) in enumerate(zip(embeds, ratios)):
        if not (
            isinstance(ratio, list) and len(ratio) == 2 and all(s in RESOLUTION_TAG_SIZES for s in ratio)
        ):
            raise MalformedRecord(
                location,
                f"matched_ratios[{k}] = {ratio!r} is not an [H, W] pair of tag sizes {RESOLUTION_TAG_SIZES}",
            )
        if not (isinstance(codes, list) and len(codes) == 2):
            raise MalformedRecord(location, f"image_embed_inds[{k}] must hold [semantic grid, pixel grid]")
        grid = ImageGrid.for_resolution(*ratio)
        for level, (expected, rows) in enumerate(zip((grid.semantic, grid.pixel), codes)):
            shape = (
                (len(rows), len(rows[0]))
                if isinstance(rows, list) and rows and isinstance(rows[0], list)
                else None
            )
            if shape != expected or any(not isinstance(r, list) or len(r) != expected[1] for r in rows):
                raise MalformedRecord(
                    location,
                    f"image_embed_inds[{k}] level {level} is not a {expected[0]}x{expected[1]} grid "
                    f"as {ratio[0]}x{ratio[1]} requires",
                )


class DefaultDataset(Dataset):
    """Conversations with optional input images and optional code-token image targets.

    Used for understanding and pure-text data, and as the base of the generation/editing
    datasets (which only add their unconditional variants). Items are dicts with `input_ids`,
    `labels` (1-D long tensors), `images` (list of `[1, 3, H, W]`), `image_sizes` ((w, h) of
    each image given to the pixel processor), `num_positions` (sequence length once images are
    expanded) and `dataset_name`.
    """

    def __init__(
        self,
        name: str,
        source: RecordSource,
        image_dir: Path,
        tokenizer: Any,
        template: ChatTemplate,
        image_preprocessor: ImagePreprocessor,
        model_max_length: int,
        cfg_text_dropout_probability: float = 0.0,
        error_policy: RecordErrorPolicy | None = None,
        seed: int = 0,
        validate: bool = True,
    ) -> None:
        if not 0.0 <= cfg_text_dropout_probability <= 1.0:
            raise ValueError(
                f"cfg_text_dropout_probability must lie in [0, 1], got {cfg_text_dropout_probability}"
            )
        self.name = name
        self.source = source
        self.image_dir = Path(image_dir)
        self.tokenizer = tokenizer
        self.template = template
        self.image_preprocessor = image_preprocessor
        self.model_max_length = model_max_length
        self.cfg_text_dropout_probability = cfg_text_dropout_probability
        self.error_policy = error_policy or RecordErrorPolicy()
        self.seed = seed
        self.epoch = 0
        self._input_sizes: dict[Path, tuple[int, int]] = {}
        self.indices = list(range(len(source)))
        if validate:
            self.indices = [i for i in self.indices if self._is_valid(i)]
            logger.info(
                "dataset %s: %d records read, %d used, %d skipped",
                name,
                len(source),
                len(self.indices),
                len(source) - len(self.indices),
            )
        if not self.indices:
            raise ValueError(f"dataset {name!r} has no usable records")

    # ------------------------------------------------------------------ record → conversation
    def _is_valid(self, index: int) -> bool:
        """Everything about a record that can be checked without decoding pixels, before training:
        a record rejected here is never drawn, so skipping it changes nothing else."""
        location = self.source.locations[index]
        try:
            _, record = self.source[index]
            prepared = self.prepare(record, location, unconditional=False)
            image_positions = 0
            for path in prepared.input_images:
                if not path.is_file():
                    raise MalformedRecord(location, f"image file not found: {path}")
                try:
                    image_positions += self._input_positions(path) - 1
                except (OSError, ValueError) as err:  # PIL cannot even read the header
                    raise MalformedRecord(location, f"unreadable image {path}: {err}") from None
            try:
                example = tokenize_conversation(prepared.messages, self.tokenizer, self.template)
            except ValueError as err:
                raise MalformedRecord(location, str(err)) from None
            self._check_length(location, len(example.input_ids) + image_positions)
        except MalformedRecord as err:
            self.error_policy.handle(err, self.name, shared=True)
            return False
        return True

    def _check_length(self, location: RecordLocation, positions: int) -> None:
        if positions > self.model_max_length:
            raise MalformedRecord(
                location,
                f"sample needs {positions} positions with its images; model_max_length is {self.model_max_length}",
            )

    def unconditional(self, record: dict[str, Any], location: RecordLocation) -> dict[str, Any]:
        """The record's classifier-free-guidance variant; plain conversations have none."""
        return record

    def prepare(
        self, record: dict[str, Any], location: RecordLocation, unconditional: bool
    ) -> PreparedRecord:
        """Validate a record and resolve its `<image>` markers (no file is opened)."""
        if "conversations" not in record:
            raise MalformedRecord(location, "record lacks 'conversations'")
        try:
            images = record_images(record)  # one file name given as a string counts as a list of one
        except ValueError as err:
            raise MalformedRecord(location, str(err)) from None
        record = {**record, "images": images}
        if unconditional:
            record = self.unconditional(record, location)
            images = record["images"]
        try:
            messages = conversation_messages(record["conversations"])
        except ValueError as err:
            raise MalformedRecord(location, str(err)) from None
        markers = sum(text.count(IMAGE_TOKEN) for _, text in messages)
        if markers != len(images):
            raise MalformedRecord(location, f"{markers} {IMAGE_TOKEN} marker(s) but {len(images)} image(s)")
        text_chars = sum(len(text) for _, text in messages) - markers * len(IMAGE_TOKEN)
        if "image_embed_inds" not in record:
            if any(RESOLUTION_TAG_FIELD in text for _, text in messages):
                raise MalformedRecord(
                    location,
                    f"{RESOLUTION_TAG_FIELD} needs matched_ratios: run codebook inference on this data",
                )
            return PreparedRecord(messages, [self.image_dir / p for p in images], text_chars=text_chars)
        _check_codes(record, location, len(images))
        prepared = self._expand_image_tokens(record, messages, location)
        prepared.text_chars = text_chars
        return prepared

    def _expand_image_tokens(
        self, record: Mapping[str, Any], messages: list[tuple[int, str]], location: RecordLocation
    ) -> PreparedRecord:
        """Fill resolution tags and turn each gpt-side `<image>` into its code tokens, in order.

        As in the official pipeline, `{resolution_tag}` becomes the tag of the first image not yet
        consumed when its turn starts; it is substituted literally (not with `str.format`, which
        broke on captions containing braces).
        """
        ratios = record["matched_ratios"]
        tags = [resolution_tag(h, w) for h, w in ratios]
        prepared = PreparedRecord(messages=[])
        k = 0
        for turn, (role, text) in enumerate(messages):
            if RESOLUTION_TAG_FIELD in text:
                if k >= len(tags):
                    raise MalformedRecord(
                        location, f"turn {turn}: {RESOLUTION_TAG_FIELD} after the last image"
                    )
                text = text.replace(RESOLUTION_TAG_FIELD, tags[k])
            pieces = text.split(IMAGE_TOKEN)
            out = [pieces[0]]
            for piece in pieces[1:]:
                if role == USER:
                    out.append(tags[k] + IMAGE_TOKEN)
                    prepared.input_images.append(self.image_dir / record["images"][k])
                else:
                    semantic, pixel = record["image_embed_inds"][k]
                    out.append(tags[k] + image_block_text(semantic, pixel))
                    prepared.target_positions += 2 + ImageGrid.for_resolution(*ratios[k]).num_tokens
                out.append(piece)
                k += 1
            prepared.messages.append((role, "".join(out)))
        return prepared

    # ------------------------------------------------------------------ sampling
    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _draws_unconditional(self, index: int) -> bool:
        if self.cfg_text_dropout_probability <= 0.0:
            return False
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.name}:{index}")
        return rng.random() < self.cfg_text_dropout_probability

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self._build(self.indices[index])
        except MalformedRecord as err:
            self.error_policy.handle(err, self.name)  # raises unless skipping
        return self._void_sample()

    def _void_sample(self) -> dict[str, Any]:
        """What a record that fails only when loaded (pixels broken behind a valid header) yields
        under `skip`: one unsupervised token, so no loss and no gradient come from it, and no
        other record is drawn in its place (that one would be seen twice in the epoch)."""
        return {
            "input_ids": torch.tensor([self.tokenizer.pad_token_id], dtype=torch.long),
            "labels": torch.tensor([IGNORE_INDEX], dtype=torch.long),
            "images": [],
            "image_sizes": [],
            "num_positions": 1,
            "dataset_name": None,
        }

    def _build(self, record_index: int) -> dict[str, Any]:
        location, record = self.source[record_index]
        prepared = self.prepare(record, location, unconditional=self._draws_unconditional(record_index))
        images, sizes = [], []
        for path in prepared.input_images:
            try:
                pil = load_image(path)
            except ImageLoadError as err:
                raise MalformedRecord(location, str(err)) from None
            tensor, size = self._preprocess(pil)
            images.append(tensor)
            sizes.append(size)
        try:
            example = tokenize_conversation(prepared.messages, self.tokenizer, self.template)
        except ValueError as err:
            raise MalformedRecord(location, str(err)) from None
        positions = len(example.input_ids) + sum(
            ImageGrid.for_resolution(*t.shape[-2:]).num_tokens - 1 for t in images
        )
        self._check_length(location, positions)
        return {
            "input_ids": torch.tensor(example.input_ids, dtype=torch.long),
            "labels": torch.tensor(example.labels, dtype=torch.long),
            "images": images,
            "image_sizes": sizes,
            "num_positions": positions,
            "dataset_name": self.name,
        }

    def _preprocess(self, image: Image.Image) -> tuple[torch.Tensor, tuple[int, int]]:
        """The pixel tensor and the (w, h) of the image handed to the MoVQ processor."""
        shaped = self.image_preprocessor.reshape(image)
        return self.image_preprocessor.to_tensor(shaped), shaped.size

    # ------------------------------------------------------------------ lengths for grouping
    def modality_length(self, index: int) -> int:
        """Estimated sequence length, negative for text-only samples (for length-grouped batches).

        Text is counted at ~4 characters per token; code-token targets and input images exactly
        (input images from their file headers).
        """
        location, record = self.source[self.indices[index]]
        prepared = self.prepare(record, location, unconditional=False)
        length = prepared.target_positions + prepared.text_chars // 4
        length += sum(self._input_positions(path) for path in prepared.input_images)
        return length if prepared.has_images else -max(length, 1)

    def input_image_sizes(self, index: int) -> tuple[tuple[int, int], ...]:
        """(H, W) of each input image tensor of sample `index` without loading pixels, for
        size-bucketed batches; the CFG variants keep the same input images."""
        location, record = self.source[self.indices[index]]
        prepared = self.prepare(record, location, unconditional=False)
        return tuple(self._input_size(path) for path in prepared.input_images)

    def _input_size(self, path: Path) -> tuple[int, int]:
        """The preprocessed (H, W) of an input image file; its header is read once (validation)."""
        if path not in self._input_sizes:
            self._input_sizes[path] = self.image_preprocessor.input_size(path)
        return self._input_sizes[path]

    def _input_positions(self, path: Path) -> int:
        """LLM positions an input image file occupies (from its cached header size)."""
        return ImageGrid.for_resolution(*self._input_size(path)).num_tokens


class Text2ImageDataset(DefaultDataset):
    """Text-to-image pairs; the unconditional variant asks for "a random image" of the same size."""

    def unconditional(self, record: dict[str, Any], location: RecordLocation) -> dict[str, Any]:
        turns = list(record["conversations"])
        if not turns or not isinstance(turns[0], dict):
            raise MalformedRecord(location, "'conversations' must start with a human turn")
        turns[0] = {**turns[0], "value": UNCONDITIONAL_T2I_PROMPT}
        return {**record, "conversations": turns}


class SingleTurnEditDataset(DefaultDataset):
    """(source, instruction) → target; the unconditional variant reconstructs the source."""

    def unconditional(self, record: dict[str, Any], location: RecordLocation) -> dict[str, Any]:
        keys = ("images", "image_embed_inds", "matched_ratios")
        if any(not isinstance(record.get(key), list) or len(record[key]) != 2 for key in keys):
            raise MalformedRecord(location, f"a single-turn edit needs exactly 2 entries in each of {keys}")
        turns = list(record["conversations"])
        turns[0] = {**turns[0], "value": RECONSTRUCTION_PROMPT}
        source = {key: [record[key][0], record[key][0]] for key in keys}
        return {**record, **source, "conversations": turns}


DATASET_TYPES: dict[str, type[DefaultDataset]] = {
    "DefaultDataset": DefaultDataset,
    "Text2ImageDataset": Text2ImageDataset,
    "SingleTurnEditDataset": SingleTurnEditDataset,
}


class MixedDataset(Dataset):
    """Several datasets back to back; forwards `set_epoch` so CFG dropout varies per epoch."""

    def __init__(self, datasets: Sequence[DefaultDataset]) -> None:
        if not datasets:
            raise ValueError("no training datasets configured")
        self.datasets = list(datasets)
        self.offsets = []
        total = 0
        for ds in self.datasets:
            self.offsets.append(total)
            total += len(ds)
        self.total = total

    def __len__(self) -> int:
        return self.total

    def _locate(self, index: int) -> tuple[DefaultDataset, int]:
        if not 0 <= index < self.total:
            raise IndexError(f"index {index} out of range for {self.total} samples")
        k = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[k], index - self.offsets[k]

    def __getitem__(self, index: int) -> dict[str, Any]:
        ds, local = self._locate(index)
        return ds[local]

    def set_epoch(self, epoch: int) -> None:
        for ds in self.datasets:
            ds.set_epoch(epoch)

    def modality_lengths(self) -> list[int]:
        return [ds.modality_length(i) for ds in self.datasets for i in range(len(ds))]

    def input_image_sizes(self) -> list[tuple[tuple[int, int], ...]]:
        return [ds.input_image_sizes(i) for ds in self.datasets for i in range(len(ds))]
