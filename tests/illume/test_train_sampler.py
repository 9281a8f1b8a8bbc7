"""Grouped sampling: a permutation, modality-pure steps, deterministic per (seed, epoch); size-bucketed
batches for ZeRO-3 as the ranks receive them through accelerate's own batch sharding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from illume.data.images import IMAGE_ASPECT_RATIO_MODES, ImagePreprocessor
from illume.data.sampler import ModalityLengthGroupedSampler, SizeBucketedSampler
from PIL import Image
from torch.utils.data import BatchSampler
from vision_tokenizer.data.image_io import load_image


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


WIDE, TALL = ((64, 96),), ((96, 64),)


def _rank_batches(sampler: SizeBucketedSampler, batch_size: int, world_size: int) -> list[list[list[int]]]:
    """What each rank's dataloader yields: accelerate shards the plain batches of the index stream."""
    batches = BatchSampler(sampler, batch_size, drop_last=False)
    return [list(BatchSamplerShard(batches, world_size, rank)) for rank in range(world_size)]


def _one_size(batch: list[int], sizes: list[tuple]) -> bool:
    return len({sizes[i] for i in batch} - {()}) <= 1


def test_size_buckets_cover_every_sample_once_in_one_size_batches_split_evenly_over_ranks() -> None:
    # Partial batches of each size are completed by image-less samples: 6 batches, nothing repeated.
    sizes = [WIDE] * 5 + [TALL] * 3 + [()] * 4
    sizes = [sizes[i] for i in torch.randperm(len(sizes), generator=torch.Generator().manual_seed(1)).tolist()]
    ranks = _rank_batches(SizeBucketedSampler(sizes, batch_size=2, world_size=2, seed=7), 2, 2)
    assert [len(r) for r in ranks] == [3, 3]
    assert all(len(b) == 2 and _one_size(b, sizes) for r in ranks for b in r)
    seen = [i for r in ranks for b in r for i in b]
    assert sorted(seen) == list(range(len(sizes)))  # each once, so the ranks are disjoint


def test_size_buckets_pad_with_their_own_samples_when_fillers_run_out() -> None:
    sizes = [WIDE] * 3 + [TALL] + [WIDE + TALL]  # last: one sample whose own images differ
    sampler = SizeBucketedSampler(sizes, batch_size=2, world_size=3, seed=0)
    ranks = _rank_batches(sampler, 2, 3)
    assert len({len(r) for r in ranks}) == 1 and sum(len(r) for r in ranks) * 2 == len(sampler)
    assert all(len(b) == 2 and _one_size(b, sizes) for r in ranks for b in r)
    assert {i for r in ranks for b in r for i in b} == set(range(len(sizes)))


def test_size_buckets_depend_only_on_seed_and_epoch() -> None:
    sizes = [WIDE, TALL, ()] * 10
    a, b = SizeBucketedSampler(sizes, 2, 2, seed=4), SizeBucketedSampler(sizes, 2, 2, seed=4)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(SizeBucketedSampler(sizes, 2, 2, seed=9)) != list(b)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("mode", IMAGE_ASPECT_RATIO_MODES)
def test_input_size_from_the_header_is_the_tensor_size(tmp_path: Path, mode: str, suffix: str) -> None:
    """What the bucketing keys on, known without decoding: also for an EXIF-rotated photo."""
    path = tmp_path / f"rotated{suffix}"
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned by 90°: 300 wide x 500 tall stored, 500 x 300 shown
    Image.new("RGB", (500, 300), (10, 200, 30)).save(path, exif=exif)
    preprocessor = ImagePreprocessor(mode)
    assert preprocessor.input_size(path) == tuple(preprocessor(load_image(path)).shape[-2:])
