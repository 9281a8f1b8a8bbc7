"""Write the image size index used for resolution-grouped tokenizer training.

    python vision_tokenizer/scripts/read_folder_image_sizes.py --input_folder DIR --output_json OUT.json
        [--threads 256] [--debug] [--verify]

OUT.json is a list of `{"image": path relative to DIR, "width": W, "height": H}` (sizes as
displayed, i.e. after EXIF orientation), sorted by path; the training config's `folder`
dataset reads it through `json_file`. Images that cannot be read are not indexed, and every
one of them is reported: on stderr and in `OUT.unreadable.json` (`{"image", "reason"}`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError
from vision_tokenizer.data.datasets import scan_image_folder
from vision_tokenizer.data.image_io import ImageLoadError, load_image

DEBUG_LIMIT = 1000
# EXIF orientations that rotate by 90 degrees (width and height swap on display).
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


def header_size(path: str) -> tuple[int, int]:
    """(width, height) as displayed, read from the file header without decoding pixels."""
    with Image.open(path) as img:
        width, height = img.size
        if img.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return width, height


def decoded_size(path: str) -> tuple[int, int]:
    """(width, height) after a full, checked decode (slower; catches truncated files)."""
    return load_image(path).size


def measure(root: str, rel: str, verify: bool) -> dict:
    path = os.path.join(root, rel)
    try:
        width, height = decoded_size(path) if verify else header_size(path)
    except ImageLoadError as error:
        return {"image": rel, "reason": error.reason}
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        return {"image": rel, "reason": f"{type(error).__name__}: {error}"}
    return {"image": rel, "width": width, "height": height}


def unreadable_path(output_json: str) -> str:
    stem = output_json[:-5] if output_json.endswith(".json") else output_json
    return f"{stem}.unreadable.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input_folder", required=True, help="folder scanned recursively for jpg/jpeg/png/bmp/gif/webp"
    )
    parser.add_argument("--output_json", required=True, help="where to write the size index")
    parser.add_argument("--threads", type=int, default=256, help="parallel readers (default 256)")
    parser.add_argument("--debug", action="store_true", help=f"only index the first {DEBUG_LIMIT} images")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="fully decode every image (finds truncated files) instead of reading headers",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    files = scan_image_folder(args.input_folder)
    if args.debug:
        files = files[:DEBUG_LIMIT]
    with ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool:
        results = list(pool.map(lambda rel: measure(args.input_folder, rel, args.verify), files))
    sizes = [r for r in results if "reason" not in r]
    failed = [r for r in results if "reason" in r]
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    with open(args.output_json, "w", encoding="utf-8") as handle:
        json.dump(sizes, handle)
    report = unreadable_path(args.output_json)
    if failed:
        with open(report, "w", encoding="utf-8") as handle:
            json.dump(failed, handle, indent=1)
        for entry in failed:
            print(
                f"unreadable: {os.path.join(args.input_folder, entry['image'])}: {entry['reason']}",
                file=sys.stderr,
            )
    elif os.path.exists(report):
        os.remove(report)
    print(
        f"indexed {len(sizes)} images into {args.output_json}; {len(failed)} unreadable"
        + (f" (listed in {report})" if failed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
