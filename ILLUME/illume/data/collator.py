"""Batching: right-pad token ids, build the attention mask from lengths, flatten the images.

The official collator derived `attention_mask` from `input_ids != pad_token_id`; Qwen's pad id is
`<|endoftext|>`, so genuine occurrences of it in the data were masked out. Here the mask comes
from each sample's length, so no real token is ever mistaken for padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from illume.vocab import IGNORE_INDEX

__all__ = ["SupervisedCollator"]


@dataclass
class SupervisedCollator:
    """Collate dataset items into model inputs.

    `dummy_image_size`: the official pipeline gave every sample without input images one all-zero
    `[1, 3, s, s]` image (256 px) that the model accepts and places nowhere. It is not needed here
    (in training the model runs its vision modules on a minimal placeholder whenever a batch has no
    image, which keeps DDP and ZeRO-3 ranks in step), so the default None adds none; set it
    to reproduce the official batches exactly.
    """

    pad_token_id: int
    dummy_image_size: int | None = None

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        if not items:
            raise ValueError("cannot collate an empty batch")
        lengths = [int(item["input_ids"].numel()) for item in items]
        longest = max(lengths)
        input_ids = torch.full((len(items), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(items), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
        images: list[torch.Tensor] = []
        image_sizes: list[tuple[int, int]] = []
        for row, (item, length) in enumerate(zip(items, lengths)):
            if item["labels"].shape != item["input_ids"].shape:
                raise ValueError(
                    f"sample {row}: labels {tuple(item['labels'].shape)} != input_ids {tuple(item['input_ids'].shape)}"
                )
            input_ids[row, :length] = item["input_ids"]
            labels[row, :length] = item["labels"]
            attention_mask[row, :length] = 1
            if item["images"]:
                images.extend(item["images"])
                image_sizes.extend(item["image_sizes"])
            elif self.dummy_image_size is not None:
                side = self.dummy_image_size
                images.append(torch.zeros(1, 3, side, side))
                image_sizes.append((side, side))
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "images": images,
            "image_sizes": image_sizes,
            "dataset_names": [item["dataset_name"] for item in items],
        }
