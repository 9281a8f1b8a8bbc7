"""Write the quick start's photo data set (scikit-image sample photos) in the official layout.

    python scripts/make_example_data.py outputs/quickstart/data [--size 256] [--edits-per-photo 2]

The folder gets the photos and their edited versions (`images/`), the understanding, generation
and editing records as jsonl before tokenizer inference, the meta-data config naming them
(`quickstart_meta_data_config.json`) and `LICENSES.md`. Tokenize the generation and editing
sets afterwards with `python -m vision_tokenizer.codebook_inference` (see static/docs/data_preparation.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from illume.quickstart.example_data import EDITS, build_example_data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created if missing)")
    parser.add_argument(
        "--size", type=int, default=256, help="side of the square photos in pixels (default 256)"
    )
    parser.add_argument(
        "--edits-per-photo",
        type=int,
        default=2,
        help=f"edited versions per photo, 1 to {len(EDITS) - 1} (default 2)",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        data = build_example_data(args.out_dir, args.size, args.edits_per_photo)
    except ValueError as error:
        raise SystemExit(f"make_example_data: {error}") from None
    print(f"{len(data.photos)} photos, {len(data.edits)} edits; meta-data config: {data.meta_config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
