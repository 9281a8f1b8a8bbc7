"""Length-grouped sampling: batches of one modality and similar length, reproducible per epoch.

The official `group_by_modality_length` used lengths that were all 1, so it only shuffled. Here
samples are split by modality (sign of the estimated length: with images vs text-only), shuffled,
cut into mega-batches of `megabatch_steps` optimizer steps (`batch_size * world_size` samples
each) that are sorted by length and cut into steps again; the steps are then shuffled. Each
rank's batch of a step holds neighbours in length, so little padding is wasted when packing is
off (`transformers`' length-grouped sampler uses mega-batches of 50 batches too). The order
depends only on (seed, epoch): resuming mid-epoch replays it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["ModalityLengthGroupedSampler"]


class ModalityLengthGroupedSampler(Sampler[int]):
    def __init__(
        self, lengths: Sequence[int], batch_size: int, world_size: int = 1, seed: int = 0, megabatch_steps: int = 50
    ) -> None:
        if batch_size < 1 or world_size < 1 or megabatch_steps < 1:
            raise ValueError(
                f"batch_size, world_size and megabatch_steps must be >= 1, got {batch_size}, {world_size}, {megabatch_steps}"
            )
        self.lengths = list(lengths)
        self.group = batch_size * world_size
        self.megabatch = self.group * megabatch_steps
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _steps(self, indices: list[int], generator: torch.Generator) -> list[list[int]]:
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        steps = []
        for start in range(0, len(order), self.megabatch):
            chunk = sorted(order[start : start + self.megabatch], key=lambda i: -abs(self.lengths[i]))
            steps += [chunk[i : i + self.group] for i in range(0, len(chunk), self.group)]
        return steps

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        multimodal = [i for i, n in enumerate(self.lengths) if n > 0]
        text_only = [i for i, n in enumerate(self.lengths) if n <= 0]
        steps = self._steps(multimodal, generator) + self._steps(text_only, generator)
        # Full steps in random order; the partial ones (at most one per modality) last, so only
        # the final step can mix modalities.
        full = [step for step in steps if len(step) == self.group]
        partial = [step for step in steps if len(step) < self.group]
        for k in torch.randperm(len(full), generator=generator).tolist():
            yield from full[k]
        for step in partial:
            yield from step
