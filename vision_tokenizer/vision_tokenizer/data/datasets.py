"""Training / evaluation image datasets of the tokenizer.

Dataset kinds (the official `dataset=` names):
* `folder`: every image below `data_path` (recursive, sorted), or the images listed in
  `json_file` (the size index written by `vision_tokenizer/scripts/read_folder_image_sizes.py`,
  which also gives every image's size for resolution bucketing without opening it);
* `imagenet`: the ImageFolder layout `data_path/<class>/**/<image>` (labels = sorted class
  folders), read without torchvision;
* `openimage`: `data_path/image_paths.json`, a list of image paths relative to `data_path`.

The official `shard_data` / `global_sharding` keys are accepted and have no effect: the batch
sampler (`data/sampler.py`) always splits each global batch over the ranks.

Items are looked up with a `(index, seed)` key: the seed drives the random augmentation, so a
sample is a pure function of its position in the epoch. Images that fail to load raise an
`ImageLoadError` naming the file: nothing is silently skipped or substituted.
"""

from __future__ import annotations

import bisect
import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from vision_tokenizer.data.image_io import ImageLoadError, load_image
from vision_tokenizer.data.transforms import ImageTransform, build_transform

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageListDataset",
    "ConcatImageDataset",
    "scan_image_folder",
    "read_size_index",
    "build_image_list",
    "build_dataset",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


def scan_image_folder(root: str) -> list[str]:
    """Paths (relative to `root`, sorted) of every image file below `root`."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for directory, _, files in os.walk(root, followlinks=True):
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(directory, name), root))
    return sorted(found)


def read_size_index(json_file: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Read `[{"image": rel_path, "width": W, "height": H}, ...]` -> (paths, (H, W) sizes)."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"image size index not found: {json_file}")
    with open(json_file, encoding="utf-8") as handle:
        entries = json.load(handle)
    if not isinstance(entries, list):
        raise ValueError(f"{json_file}: expected a JSON list of {{image, width, height}} entries")
    paths, sizes = [], []
    for position, entry in enumerate(entries):
        try:
            paths.append(str(entry["image"]))
            sizes.append((int(entry["height"]), int(entry["width"])))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{json_file}: entry {position} is not {{image, width, height}}: {entry!r}"
            ) from error
    return paths, sizes


class ImageListDataset(Dataset):
    """Images given as paths relative to `root`, with optional labels and known (H, W) sizes."""

    def __init__(
        self,
        root: str,
        paths: Sequence[str],
        transform: ImageTransform,
        labels: Sequence[int] | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.root = root
        self.paths = list(paths)
        self.transform = transform
        self.labels = list(labels) if labels is not None else [0] * len(self.paths)
        self._sizes = list(sizes) if sizes is not None else None
        if not self.paths:
            raise ValueError(f"no images found for dataset at {root}")

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.paths[index])

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        """(H, W) of every image: from the size index, else read from the image headers once."""
        if self._sizes is None:
            sizes = []
            for index in range(len(self)):
                try:
                    with Image.open(self.path(index)) as img:
                        sizes.append((img.height, img.width))
                except OSError as error:
                    raise ImageLoadError(f"cannot read the size of {self.path(index)}: {error}") from error
            self._sizes = sizes
        return self._sizes

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        image = self.transform(load_image(self.path(index)), random.Random(seed))
        return {"image": image, "label": self.labels[index], "index": index, "seed": seed}


class ConcatImageDataset(Dataset):
    """Several image datasets seen as one (global indices run through them in order)."""

    def __init__(self, datasets: Sequence[ImageListDataset]) -> None:
        if not datasets:
            raise ValueError("ConcatImageDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.offsets = [0]
        for dataset in self.datasets:
            self.offsets.append(self.offsets[-1] + len(dataset))

    def __len__(self) -> int:
        return self.offsets[-1]

    def _locate(self, index: int) -> tuple[ImageListDataset, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        part = bisect.bisect_right(self.offsets, index) - 1
        return self.datasets[part], index - self.offsets[part]

    def path(self, index: int) -> str:
        dataset, local = self._locate(index)
        return dataset.path(local)

    @property
    def image_sizes(self) -> list[tuple[int, int]]:
        return [size for dataset in self.datasets for size in dataset.image_sizes]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, seed = key
        dataset, local = self._locate(index)
        item = dataset[(local, seed)]
        item["index"] = index
        return item


def _imagenet_layout(root: str) -> tuple[list[str], list[int]]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"ImageNet folder not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise ValueError(f"{root}: expected one sub-folder per class (ImageFolder layout)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for rel in scan_image_folder(os.path.join(root, name)):
            paths.append(os.path.join(name, rel))
            labels.append(label)
    return paths, labels


def _openimage_list(root: str) -> list[str]:
    listing = os.path.join(root, "image_paths.json")
    if not os.path.isfile(listing):
        raise FileNotFoundError(f"openimage dataset: {listing} not found")
    with open(listing, encoding="utf-8") as handle:
        entries = json.load(handle)
    return [entry["image"] if isinstance(entry, dict) else str(entry) for entry in entries]


def build_image_list(
    spec: Mapping[str, Any],
) -> tuple[str, list[str], list[int] | None, list[tuple[int, int]] | None]:
    """Resolve one dataset dict to (root, relative paths, labels, sizes)."""
    kind = spec.get("dataset", spec.get("type"))
    root = spec.get("data_path")
    if not root:
        raise ValueError(f"dataset {kind!r} needs data_path (got {dict(spec)!r})")
    if kind == "folder":
        json_file = spec.get("json_file")
        if json_file:
            paths, sizes = read_size_index(json_file)
            return root, paths, None, sizes
        return root, scan_image_folder(root), None, None
    if kind == "imagenet":
        paths, labels = _imagenet_layout(root)
        return root, paths, labels, None
    if kind == "openimage":
        return root, _openimage_list(root), None, None
    raise ValueError(f"dataset kind {kind!r} is not supported (choices: ['folder', 'imagenet', 'openimage'])")


def build_dataset(split_cfg: Mapping[str, Any]) -> ImageListDataset | ConcatImageDataset:
    """Build `data_args.train` / `data_args.val`: `dataset` is one dict, a list of dicts, or a
    name with the dataset keys beside it (the official `val` form)."""
    transform = build_transform(split_cfg["augment"], split_cfg["resolution"])
    specs = split_cfg["dataset"]
    if isinstance(specs, str):
        specs = [{k: v for k, v in split_cfg.items() if k not in ("augment", "resolution")}]
    elif isinstance(specs, Mapping):
        specs = [specs]
    datasets = []
    for spec in specs:
        root, paths, labels, sizes = build_image_list(spec)
        datasets.append(ImageListDataset(root, paths, transform, labels=labels, sizes=sizes))
    return datasets[0] if len(datasets) == 1 else ConcatImageDataset(datasets)
