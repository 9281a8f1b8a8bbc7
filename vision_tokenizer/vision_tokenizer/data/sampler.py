"""Distributed batch sampling with optional resolution grouping, and the batch collate.

`ResolutionGroupedBatchSampler` decides, per epoch, the whole sequence of *global* batches
(`local_batch * world_size` images) from a seed, then hands each rank its slice. Therefore
* every rank sees a disjoint part of the data and the split adapts to any world size
  (nothing assumes 8 GPUs per node);
* with grouping on, a global batch holds images of the same or neighbouring original size
  (sorted by (H, W), ties broken randomly), so all ranks of one step train on alike shapes;
* a batch position fully determines its samples and their augmentation seeds: a run resumed
  at (epoch, batch) continues with exactly the data it would have seen.

`collate_images` stacks `[1, 3, H, W]` samples. When sizes differ (any-resolution training)
every image is resized to cover the batch's common size (min H, min W, floored to 16) keeping
its aspect ratio, then randomly cropped there: portrait images stay portrait.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler

__all__ = ["ResolutionGroupedBatchSampler", "collate_images", "sample_seed"]

SIZE_FACTOR = 16


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for the sample at `position` of `epoch` (independent streams per sample)."""
    return int(
        np.random.SeedSequence([seed, epoch, position]).generate_state(2, dtype=np.uint32).view(np.uint64)[0]
        >> 1
    )


class ResolutionGroupedBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's batches as lists of `(dataset index, sample seed)`.

    The last incomplete global batch is dropped, so every rank runs the same number of steps.
    `start_batch` skips the first batches of the current epoch (exact resume).
    """

    def __init__(
        self,
        num_samples: int,
        local_batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        shuffle: bool = True,
    ) -> None:
        if local_batch_size < 1:
            raise ValueError(f"local batch size must be >= 1, got {local_batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if image_sizes is not None and len(image_sizes) != num_samples:
            raise ValueError(f"{len(image_sizes)} image sizes for {num_samples} samples")
        self.num_samples = num_samples
        self.local_batch_size = local_batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.image_sizes = list(image_sizes) if image_sizes is not None else None
        self.shuffle = shuffle
        self.epoch = 0
        self.start_batch = 0
        self.global_batch_size = local_batch_size * world_size
        if num_samples < self.global_batch_size:
            raise ValueError(
                f"{num_samples} images cannot fill one global batch of {self.global_batch_size} "
                f"({local_batch_size} per rank x {world_size} ranks)"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def __len__(self) -> int:
        return self.num_samples // self.global_batch_size

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All global batches of `epoch`, in order, as dataset indices."""
        rng = np.random.default_rng([self.seed, epoch])
        if self.image_sizes is not None:
            tiebreak = rng.permutation(self.num_samples) if self.shuffle else np.arange(self.num_samples)
            sizes = np.asarray(self.image_sizes, dtype=np.int64).reshape(-1, 2)
            order = np.lexsort((tiebreak, sizes[:, 1], sizes[:, 0]))
        elif self.shuffle:
            order = rng.permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        count = len(self) * self.global_batch_size
        batches = order[:count].reshape(len(self), self.global_batch_size)
        if self.image_sizes is not None and self.shuffle:
            batches = batches[rng.permutation(len(batches))]
        return batches.tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        lo = self.rank * self.local_batch_size
        for number, batch in enumerate(self.global_batches(self.epoch)):
            if number < self.start_batch:
                continue
            base = number * self.global_batch_size + lo
            yield [
                (index, sample_seed(self.seed, self.epoch, base + offset))
                for offset, index in enumerate(batch[lo : lo + self.local_batch_size])
            ]


def _cover_and_crop(image: torch.Tensor, height: int, width: int, rng: random.Random) -> torch.Tensor:
    _, _, h, w = image.shape
    scale = max(height / h, width / w)
    if scale != 1.0:
        size = (max(height, round(h * scale)), max(width, round(w * scale)))
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        h, w = size
    top = rng.randint(0, h - height)
    left = rng.randint(0, w - width)
    return image[:, :, top : top + height, left : left + width]


def collate_images(items: Sequence[dict[str, Any]], anyres: bool = False) -> dict[str, Any]:
    """Stack samples into `{"image": [B,3,H,W], "label": [B], "index": [B]}`.

    Equal sizes are stacked as they are. Different sizes need `anyres=True` (the config's
    `training_with_anyres`); otherwise the mismatch is an error naming the sizes.
    """
    images = [item["image"] if item["image"].dim() == 4 else item["image"].unsqueeze(0) for item in items]
    shapes = {tuple(image.shape[-2:]) for image in images}
    if len(shapes) > 1:
        if not anyres:
            raise ValueError(
                f"batch mixes image sizes {sorted(shapes)}; enable training_with_anyres or use a "
                "fixed-resolution augment"
            )
        height = max(SIZE_FACTOR, min(h for h, _ in shapes) // SIZE_FACTOR * SIZE_FACTOR)
        width = max(SIZE_FACTOR, min(w for _, w in shapes) // SIZE_FACTOR * SIZE_FACTOR)
        rng = random.Random(items[0].get("seed", 0))
        images = [_cover_and_crop(image, height, width, rng) for image in images]
    return {
        "image": torch.cat(images, dim=0),
        "label": torch.tensor([int(item.get("label", 0)) for item in items]),
        "index": torch.tensor([int(item.get("index", -1)) for item in items]),
    }
