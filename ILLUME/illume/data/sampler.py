"""Length-grouped sampling: batches of one modality and similar length, reproducible per epoch.

The official `group_by_modality_length` used lengths that were all 1, so it only shuffled. Here
samples are split by modality (sign of the estimated length: with images vs text-only), shuffled,
cut into mega-batches of `batch_size * world_size` samples that are sorted by length, so each
rank's batch of a step holds neighbours in length and little padding is wasted. The order
depends only on (seed, epoch): resuming mid-epoch replays it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["ModalityLengthGroupedSampler"]


class ModalityLengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}")
        self.lengths = list(lengths)
        self.group = batch_size * world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _megabatches(self, indices: list[int], generator: torch.Generator) -> list[list[int]]:
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        chunks = [order[i : i + self.group] for i in range(0, len(order), self.group)]
        return [sorted(chunk, key=lambda i: -abs(self.lengths[i])) for chunk in chunks]

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        multimodal = [i for i, n in enumerate(self.lengths) if n > 0]
        text_only = [i for i, n in enumerate(self.lengths) if n <= 0]
        megabatches = self._megabatches(multimodal, generator) + self._megabatches(text_only, generator)
        # Full mega-batches in random order; the partial ones (at most one per modality) last, so
        # only the final step can mix modalities.
        full = [mb for mb in megabatches if len(mb) == self.group]
        partial = [mb for mb in megabatches if len(mb) < self.group]
        for k in torch.randperm(len(full), generator=generator).tolist():
            yield from full[k]
        for mb in partial:
            yield from mb
