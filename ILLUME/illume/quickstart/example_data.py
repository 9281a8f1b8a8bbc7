"""A small real-photo training set for the quick start, built from scikit-image's bundled samples.

Every picture ships inside the `scikit-image` wheel (`skimage.data`), so nothing is downloaded.
Captions, answers and edit instructions were written by looking at the photos and describe only
what is visible. Edits are simple deterministic image operations, so each instruction is exactly
true of its target.

The output folder has the official training-data layout (SPEC-mllm C8)::

    images/<photo>.png, images/<photo>_<edit>.png      square RGB PNGs
    quickstart_understanding/jsonl_before_tokenizer/0000.jsonl
    quickstart_generation/jsonl_before_tokenizer/0000.jsonl
    quickstart_editing/jsonl_before_tokenizer/0000.jsonl
    quickstart_meta_data_config.json                   the meta-data config naming all three
    LICENSES.md                                        source and licence of every photo
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "Photo",
    "Edit",
    "PHOTOS",
    "EDITS",
    "META_CONFIG_NAME",
    "DATASET_NAMES",
    "DESCRIBE_QUESTION",
    "COLOUR_QUESTION",
    "ExampleData",
    "select_photos",
    "build_example_data",
    "generation_text",
    "editing_text",
]

META_CONFIG_NAME = "quickstart_meta_data_config.json"
DATASET_NAMES = {
    "understanding": "quickstart_understanding",
    "generation": "quickstart_generation",
    "editing": "quickstart_editing",
}
DESCRIBE_QUESTION = "Describe the image."
COLOUR_QUESTION = "Is this photo in colour or in black and white?"


@dataclass(frozen=True)
class Photo:
    """One `skimage.data` picture with its caption (a sentence ending in '.') and licence note."""

    name: str
    caption: str
    grayscale: bool
    source: str
    licence: str

    def load(self) -> Image.Image:
        """The picture as an RGB PIL image (grey ones are replicated to three channels)."""
        from skimage import data

        array = np.asarray(getattr(data, self.name)())
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        return Image.fromarray(array[..., :3].astype(np.uint8), "RGB")


@dataclass(frozen=True)
class Edit:
    """A deterministic edit and the instruction that describes it."""

    key: str
    instruction: str
    apply: Callable[[Image.Image], Image.Image]
    for_grayscale: bool = True


def _black_and_white(image: Image.Image) -> Image.Image:
    return ImageOps.grayscale(image).convert("RGB")


def _zoom(image: Image.Image) -> Image.Image:
    """Keep the central 60 % of each side and scale it back up to the original size."""
    width, height = image.size
    keep_w, keep_h = round(width * 0.6), round(height * 0.6)
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    return image.crop((left, top, left + keep_w, top + keep_h)).resize(image.size, Image.Resampling.LANCZOS)


def _blue_tint(image: Image.Image) -> Image.Image:
    blue = Image.new("RGB", image.size, (40, 90, 255))
    return Image.blend(image, blue, 0.35)


EDITS: tuple[Edit, ...] = (
    Edit("mirror", "Mirror the image horizontally.", ImageOps.mirror),
    Edit("black_and_white", "Make the image black and white.", _black_and_white, for_grayscale=False),
    Edit("upside_down", "Turn the image upside down.", lambda image: image.rotate(180)),
    Edit("zoom", "Zoom in on the centre of the image.", _zoom),
    Edit("blue_tint", "Give the image a blue tint.", _blue_tint),
)

PHOTOS: tuple[Photo, ...] = (
    Photo(
        "astronaut",
        "a smiling astronaut in an orange spacesuit in front of an American flag and a model of the space shuttle.",
        False,
        "Eileen Collins, NASA astronaut; NASA Great Images database (https://flic.kr/p/r9qvLn)",
        "public domain (NASA, no known copyright restrictions)",
    ),
    Photo(
        "chelsea",
        "a close-up of a tabby cat with green eyes and pink nose.",
        False,
        "Chelsea the cat; photo by Stefan van der Walt",
        "CC0",
    ),
    Photo(
        "coffee",
        "a cup of espresso on a red saucer with a spoon, on a wooden table.",
        False,
        "coffee cup, courtesy of Pikolo Espresso Bar; photo by Rachel Michetti",
        "CC0",
    ),
    Photo(
        "rocket",
        "a white rocket on its launch pad between tall towers, lit by bright lamps under a deep blue evening sky.",
        False,
        "launch of DSCOVR on Falcon 9; SpaceX Photos (https://www.flickr.com/photos/spacexphotos/16511594820/)",
        "public domain (released by SpaceX)",
    ),
    Photo(
        "hubble_deep_field",
        "a deep view of space full of small colourful galaxies on a black background.",
        False,
        "Hubble eXtreme Deep Field; NASA (HubbleSite)",
        "public domain (NASA)",
    ),
    Photo(
        "retina",
        "an orange-red photograph of a human retina with dark branching blood vessels.",
        False,
        "fundus photograph of a normal left eye; Mikael Häggström, Wikimedia Commons",
        "CC0 1.0",
    ),
    Photo(
        "camera",
        "a black and white photo of a man in a dark coat looking through a camera on a tripod in a field.",
        True,
        "cameraman; photo by Lav Varshney",
        "CC0",
    ),
    Photo(
        "coins",
        "a black and white photo of rows of ancient coins on a dark background.",
        True,
        "Greek coins from Pompeii; Brooklyn Museum Collection",
        "no known copyright restrictions",
    ),
)


def generation_text(caption: str) -> str:
    """The official text-to-image request; `{resolution_tag}` stays a literal format field."""
    return f"Generate an image of {{resolution_tag}}, the content of image is {caption}\n"


def editing_text(instruction: str) -> str:
    """The official single-turn editing request for an input image."""
    return f"<image>\nPlease edit the image according to the instruction: {instruction}\n"


def _square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize, so that every anchor match is exact (no crop is skipped)."""
    return ImageOps.fit(image, (size, size), Image.Resampling.LANCZOS)


def _turn(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def _photo_edits(index: int, photo: Photo, per_photo: int) -> list[Edit]:
    """`per_photo` edits per photo, rotating through the table so every edit is used about equally."""
    usable = [edit for edit in EDITS if edit.for_grayscale or not photo.grayscale]
    return [usable[(index + k) % len(usable)] for k in range(per_photo)]


@dataclass(frozen=True)
class ExampleData:
    """Where `build_example_data` wrote things, and what it wrote."""

    root: Path
    meta_config: Path
    image_dir: Path
    photos: tuple[Photo, ...]
    edits: tuple[tuple[str, str, str], ...]  # (photo name, edit key, instruction)


def select_photos(names: tuple[str, ...] | list[str]) -> tuple[Photo, ...]:
    """The photos called `names`, in that order (all of them for an empty list)."""
    table = {photo.name: photo for photo in PHOTOS}
    unknown = [name for name in names if name not in table]
    if unknown:
        raise ValueError(f"unknown photos {unknown}; choose from {sorted(table)}")
    if len(set(names)) != len(names):
        raise ValueError(f"photos are listed twice: {list(names)}")
    return tuple(table[name] for name in names) if names else PHOTOS


def build_example_data(
    root: str | Path, size: int = 256, edits_per_photo: int = 2, photos: tuple[Photo, ...] = PHOTOS
) -> ExampleData:
    """Write the photos, their edits and the three datasets' jsonl files below `root`."""
    if size % 16:
        raise ValueError(f"size must be a multiple of 16 (the pixel-token stride), got {size}")
    if not 1 <= edits_per_photo <= len(EDITS) - 1:
        raise ValueError(f"edits_per_photo must lie in [1, {len(EDITS) - 1}], got {edits_per_photo}")
    root = Path(root)
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    understanding, generation, editing, edits = [], [], [], []
    for index, photo in enumerate(photos):
        image = _square(photo.load(), size)
        image.save(image_dir / f"{photo.name}.png")
        source = f"{photo.name}.png"
        colour = "It is a black and white photo." if photo.grayscale else "It is a colour photo."
        describe = photo.caption[0].upper() + photo.caption[1:]
        understanding.append({"images": [source], "conversations": _turn(DESCRIBE_QUESTION, describe)})
        understanding.append({"images": [source], "conversations": _turn(COLOUR_QUESTION, colour)})
        generation.append({
            "images": [source],
            "conversations": [{"from": "human", "value": generation_text(photo.caption)},
                              {"from": "gpt", "value": "<image>"}],
        })  # fmt: skip
        for edit in _photo_edits(index, photo, edits_per_photo):
            target = f"{photo.name}_{edit.key}.png"
            edit.apply(image).save(image_dir / target)
            editing.append({
                "images": [source, target],
                "conversations": [{"from": "human", "value": editing_text(edit.instruction)},
                                  {"from": "gpt", "value": "<image>"}],
            })  # fmt: skip
            edits.append((photo.name, edit.key, edit.instruction))

    meta = {}
    for kind, records, tokenized in (
        ("understanding", understanding, False),
        ("generation", generation, True),
        ("editing", editing, True),
    ):
        name = DATASET_NAMES[kind]
        _write_jsonl(root / name / "jsonl_before_tokenizer" / "0000.jsonl", records)
        meta[name] = {
            "root": name,
            "image_dir": "images",
            "annotation_dir": f"{name}/jsonl_before_tokenizer",
            "tokenizer_inference": tokenized,
        }
    meta_config = root / META_CONFIG_NAME
    meta_config.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _write_licences(root / "LICENSES.md", photos)
    return ExampleData(root, meta_config, image_dir, tuple(photos), tuple(edits))


def _write_licences(path: Path, photos: tuple[Photo, ...]) -> None:
    rows = [
        "# Quick-start photos: sources and licences",
        "",
        "All pictures come from the sample data shipped with scikit-image (`skimage.data`); the notes",
        "below restate the docstrings of those functions. Each was centre-cropped to a square and resized;",
        "edited versions are deterministic operations on that square (mirror, black and white, rotation,",
        "zoom, blue tint).",
        "",
        "| file | `skimage.data` | subject and source | licence |",
        "|---|---|---|---|",
    ]
    rows += [f"| `{p.name}.png` | `{p.name}()` | {p.source} | {p.licence} |" for p in photos]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
