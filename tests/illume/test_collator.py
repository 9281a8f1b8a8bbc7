"""The training collator: right padding, attention from lengths, images flattened in order."""

from __future__ import annotations

import pytest
import torch
from illume.data.collator import SupervisedCollator
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX

PAD = 7


def _item(ids: list[int], images: int = 0, name: str = "d") -> dict:
    tensors = [torch.full((1, 3, 32, 48), float(k)) for k in range(images)]
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor([IGNORE_INDEX] + ids[1:]),
        "images": tensors,
        "image_sizes": [(48, 32)] * images,
        "dataset_name": name,
    }


def test_padding_and_attention_come_from_lengths_not_pad_id() -> None:
    # The pad id occurs as a genuine token inside the first sample: it must stay attended.
    batch = SupervisedCollator(PAD)([_item([1, PAD, 3, IMAGE_TOKEN_INDEX], images=1), _item([4, 5])])
    assert batch["input_ids"].tolist() == [[1, PAD, 3, IMAGE_TOKEN_INDEX], [4, 5, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, PAD, 3, IMAGE_TOKEN_INDEX],
        [IGNORE_INDEX, 5, IGNORE_INDEX, IGNORE_INDEX],
    ]


def test_images_are_flattened_in_sample_order_with_dummies_for_imageless_samples() -> None:
    batch = SupervisedCollator(PAD, dummy_image_size=16)(
        [_item([1], images=2, name="a"), _item([2], name="b"), _item([3], images=1, name="c")]
    )
    shapes = [tuple(t.shape) for t in batch["images"]]
    assert shapes == [(1, 3, 32, 48), (1, 3, 32, 48), (1, 3, 16, 16), (1, 3, 32, 48)]
    assert [float(t.flatten()[0]) for t in batch["images"]] == [0.0, 1.0, 0.0, 0.0]
    assert batch["image_sizes"] == [(48, 32), (48, 32), (16, 16), (48, 32)]
    assert batch["dataset_names"] == ["a", "b", "c"]


def test_without_dummy_images_text_samples_add_none() -> None:
    batch = SupervisedCollator(PAD, dummy_image_size=None)([_item([1]), _item([2], images=1)])
    assert len(batch["images"]) == 1


def test_mismatched_labels_and_empty_batches_are_errors() -> None:
    bad = _item([1, 2])
    bad["labels"] = torch.tensor([1])
    with pytest.raises(ValueError, match="labels"):
        SupervisedCollator(PAD)([bad])
    with pytest.raises(ValueError, match="empty"):
        SupervisedCollator(PAD)([])
