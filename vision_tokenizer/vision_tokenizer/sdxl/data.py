"""Training data for the decoder: image pairs (2S target, S tokenizer input) bucketed by size.

Every image is assigned once to the decoder size (W, H) closest to its aspect ratio; a batch holds
one size only, because the UNet and the tokenizer need equal shapes within a batch. All randomness
(batch order, crops, flips) is a pure function of (seed, epoch, image), so a resumed run sees
exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vision_tokenizer.data.image_io import ImageLoadError, image_to_tensor, load_image

from .resolutions import nearest_decoder_size, resolution_index

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageRecord",
    "find_image_records",
    "DecoderImageDataset",
    "BucketBatchSampler",
    "BatchStream",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
_EXIF_ORIENTATION = 0x0112
_ROTATED_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_SEED_MIX = 1_000_003


@dataclass(frozen=True)
class ImageRecord:
    path: str
    width: int  # as displayed, i.e. after the EXIF rotation load_image applies
    height: int


def _displayed_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(_EXIF_ORIENTATION) in _ROTATED_ORIENTATIONS:
                width, height = height, width
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageLoadError(path, f"cannot read the image header ({err})") from None
    return width, height


def find_image_records(root: str | os.PathLike, sizes_file: str | os.PathLike | None = None) -> list[ImageRecord]:
    """Images under `root` with their sizes, from `sizes_file` if given, else by reading headers."""
    root = Path(root)
    if sizes_file is not None:
        with open(sizes_file, encoding="utf-8") as handle:
            entries = json.load(handle)
        records = []
        for number, entry in enumerate(entries):
            try:
                records.append(ImageRecord(str(root / entry["image"]), int(entry["width"]), int(entry["height"])))
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{sizes_file}: entry {number} needs 'image', 'width', 'height' ({err!r})") from None
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"data.root is not a folder: {root}")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        records = [ImageRecord(str(p), *_displayed_size(p)) for p in paths]
    if not records:
        raise ValueError(f"no training images found under {root}")
    return records


def _cover_crop(image: Image.Image, width: int, height: int, rng: random.Random) -> Image.Image:
    """Resize so the image covers width x height (aspect kept), then crop a random window."""
    scale = max(width / image.width, height / image.height)
    new_w = max(width, round(image.width * scale))
    new_h = max(height, round(image.height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.LANCZOS)
    left = rng.randint(0, new_w - width)
    top = rng.randint(0, new_h - height)
    return image.crop((left, top, left + width, top + height))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    # Sides are already multiples of 16, so the tokenizer conversion does no resizing.
    return image_to_tensor(image, min_pixels=1, max_pixels=image.width * image.height)[0]


class DecoderImageDataset(Dataset):
    """Item `(index, seed)` -> {"target": [3,H,W], "source": [3,H/2,W/2], "size_index": int}.

    `target` is the decoder output size (W, H) of the image's bucket, `source` the same crop at
    half size (PIL bicubic, as the tokenizer's own preprocessing) for DualViTok.
    """

    def __init__(self, records: Sequence[ImageRecord], sizes: Sequence[tuple[int, int]], random_flip: bool = True):
        self.records = list(records)
        self.sizes = [tuple(s) for s in sizes]
        self.random_flip = random_flip
        self.record_sizes = [nearest_decoder_size(r.height, r.width, self.sizes) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def buckets(self) -> list[int]:
        """Bucket (index into `sizes`) of every record."""
        return [self.sizes.index(size) for size in self.record_sizes]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        width, height = self.record_sizes[index]
        rng = random.Random(seed)
        crop = _cover_crop(load_image(self.records[index].path), width, height, rng)
        if self.random_flip and rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        source = crop.resize((width // 2, height // 2), Image.Resampling.BICUBIC)
        return {"target": _to_tensor(crop), "source": _to_tensor(source), "size_index": resolution_index(height, width)}


class BucketBatchSampler:
    """Global micro-batches of one bucket each, identical on every rank; a rank takes its slice.

    Incomplete batches at the end of a bucket are dropped for that epoch (a different subset each
    epoch, as the bucket is reshuffled).
    """

    def __init__(self, buckets: Sequence[int], global_batch: int, rank: int, world_size: int, seed: int):
        if global_batch % world_size:
            raise ValueError(f"global micro-batch {global_batch} does not split over {world_size} ranks")
        self.buckets = list(buckets)
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        counts = {b: self.buckets.count(b) for b in set(self.buckets)}
        if max(counts.values()) < global_batch:
            raise ValueError(
                f"no size bucket holds a full batch of {global_batch} images (bucket sizes: {counts}); "
                "add images or lower train.micro_batch_size"
            )

    def global_batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * _SEED_MIX + epoch)
        batches: list[list[int]] = []
        for bucket in sorted(set(self.buckets)):
            members = [i for i, b in enumerate(self.buckets) if b == bucket]
            order = [members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
            full = len(order) - len(order) % self.global_batch
            batches.extend(order[i : i + self.global_batch] for i in range(0, full, self.global_batch))
        return [batches[j] for j in torch.randperm(len(batches), generator=generator).tolist()]

    def __len__(self) -> int:
        """Global batches per epoch."""
        return sum(self.buckets.count(b) // self.global_batch for b in set(self.buckets))

    def rank_batches(self, epoch: int, start: int = 0) -> list[list[tuple[int, int]]]:
        """This rank's (index, augmentation seed) lists for the epoch, from batch `start` on."""
        per_rank = self.global_batch // self.world_size
        result = []
        for batch in self.global_batches(epoch)[start:]:
            part = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
            result.append([(i, ((self.seed * _SEED_MIX + epoch) * _SEED_MIX + i) % 2**63) for i in part])
        return result


class BatchStream:
    """Endless collated batches across epochs; `state()` is the position for an exact resume."""

    def __init__(self, dataset: Dataset, sampler: BucketBatchSampler, num_workers: int, epoch: int = 0, position: int = 0):
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers = num_workers
        self.epoch = epoch
        self.position = position
        self._iterator: Iterator[dict[str, Any]] | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def _open_epoch(self) -> None:
        batches = self.sampler.rank_batches(self.epoch, self.position)
        loader = DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers, pin_memory=torch.cuda.is_available())
        self._iterator = iter(loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> dict[str, Any]:
        for _ in range(2):
            if self._iterator is None:
                self._open_epoch()
            try:
                batch = next(self._iterator)
            except StopIteration:
                self.epoch, self.position, self._iterator = self.epoch + 1, 0, None
                continue
            self.position += 1
            return batch
        raise RuntimeError(f"epoch {self.epoch} yields no batches")
