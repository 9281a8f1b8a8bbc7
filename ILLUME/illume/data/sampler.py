"""Grouped sampling, reproducible per epoch: batches of one modality and similar length, or of one
input-image size (ZeRO-3, :class:`SizeBucketedSampler`).

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

__all__ = ["ModalityLengthGroupedSampler", "SizeBucketedSampler"]


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


SizeKey = tuple[tuple[int, int], ...]


class SizeBucketedSampler(Sampler[int]):
    """Per-device batches whose input images all have one size, for ZeRO-3 with batches > 1.

    ZeRO-3 gathers parameters in forward hooks, collectively: every rank must call the same
    modules. Images of one size take the ViT's batched path and one pixel-encoder call; mixed sizes
    take the per-image path. So each batch of `batch_size` samples draws from one size bucket
    (`sizes[i]`: the (H, W) of sample i's input images after preprocessing, `()` for none).
    Samples without input images run the same modules as a one-size batch (the tower's placeholder
    is one image), so they first complete the buckets' partial batches; what remains of a bucket
    is padded with repeats of its own samples, and the batch count is padded to a multiple of
    `world_size` with repeated batches, so every rank runs the same number of steps and the
    loader's shard never fills a batch across buckets. A sample whose own images differ in size
    is a bucket of its own kind; the trainer still stops on it. The order depends only on
    (seed, epoch).
    """

    def __init__(self, sizes: Sequence[SizeKey], batch_size: int, world_size: int = 1, seed: int = 0) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}")
        self.sizes = [tuple(s) for s in sizes]
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """This epoch's per-device batches, in the order the ranks take them (round robin)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        buckets: dict[SizeKey, list[int]] = {}
        for index, key in enumerate(self.sizes):
            buckets.setdefault(key, []).append(index)

        def shuffled(indices: list[int]) -> list[int]:
            return [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]

        free = shuffled(buckets.pop((), []))
        size = self.batch_size
        batches: list[list[int]] = []
        partial: list[list[int]] = []
        for key in sorted(buckets):
            order = shuffled(buckets[key])
            for start in range(0, len(order), size):
                (batches if len(order) - start >= size else partial).append(order[start : start + size])
        for batch in partial:
            take = min(size - len(batch), len(free))
            batch += free[:take]
            free = free[take:]
        partial += [free[start : start + size] for start in range(0, len(free), size)]
        for batch in partial:
            own = list(batch)
            while len(batch) < size:
                batch.append(own[(len(batch) - len(own)) % len(own)])
        batches += partial
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        missing = -len(batches) % self.world_size
        return batches + [batches[i % len(batches)] for i in range(missing)]

    def __len__(self) -> int:
        return len(self.batches()) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch
