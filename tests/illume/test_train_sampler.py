"""Length-grouped sampling: a permutation, modality-pure steps, deterministic per (seed, epoch)."""

from __future__ import annotations

import torch
from illume.data.sampler import ModalityLengthGroupedSampler


def test_sampler_is_a_permutation_with_modality_pure_sorted_steps() -> None:
    lengths = [(-1) ** i * (10 + 7 * i % 50) for i in range(41)]  # mixed text-only (<0) and multimodal
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=2, world_size=2, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(41))
    steps = [order[i : i + 4] for i in range(0, len(order), 4)]
    mixed = [s for s in steps if len({lengths[i] > 0 for i in s}) > 1]
    assert len(mixed) <= 1 and (not mixed or mixed[0] is steps[-1] or mixed[0] is steps[-2])
    for step in steps:
        sizes = [abs(lengths[i]) for i in step]
        if len({lengths[i] > 0 for i in step}) == 1:
            assert sizes == sorted(sizes, reverse=True)


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    lengths = list(range(1, 30))
    a = ModalityLengthGroupedSampler(lengths, batch_size=1, seed=5)
    b = ModalityLengthGroupedSampler(lengths, batch_size=1, seed=5)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)


def test_grouped_batches_need_less_padding_than_random_ones() -> None:
    """What the grouping is for when packing is off: right-padding to the longest sample of a batch."""
    generator = torch.Generator().manual_seed(0)
    lengths = (torch.randint(20, 2000, (256,), generator=generator) * torch.where(torch.rand(256, generator=generator) < 0.5, 1, -1)).tolist()

    def padding(order: list[int], batch: int) -> int:
        sizes = [abs(lengths[i]) for i in order]
        return sum(max(b) * len(b) - sum(b) for b in (sizes[i : i + batch] for i in range(0, len(sizes), batch)))

    grouped = list(ModalityLengthGroupedSampler(lengths, batch_size=4, world_size=2, seed=1))
    shuffled = torch.randperm(len(lengths), generator=generator).tolist()
    assert padding(grouped, 4) < 0.1 * padding(shuffled, 4)
