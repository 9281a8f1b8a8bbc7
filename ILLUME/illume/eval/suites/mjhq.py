"""MJHQ-30k FID: images from the MJHQ meta file, then FID against the reference photos.

Input: `meta_data.json` = `{id: {"category": ..., "prompt": ...}}` (playgroundai/MJHQ-30K); the
reference images are `mjhq30k_imgs/<category>/<id>.jpg` from the same dataset. Output:
`<output_dir>/images/<category>/<id>.png` (one image per prompt, seed `seed + index`), and
`<output_dir>/fid.json` with the FID over all generated items and per category, each against the
reference images of the same ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vision_tokenizer.utils.user_errors import UserError

from illume.eval.suites.common import (
    SAFE_NAME,
    T2IJob,
    atomic_save,
    fingerprint,
    read_entries,
    run_generation_suite,
)

__all__ = ["read_meta", "reference_image", "run"]


def read_meta(path: Path) -> list[tuple[str, str, str]]:
    """(id, category, prompt) in file order."""
    table = read_entries(path, "--meta", "MJHQ-30K's meta_data.json", ("category", "prompt"))
    return [
        (str(k).translate(SAFE_NAME), e["category"].translate(SAFE_NAME), e["prompt"])
        for k, e in table.items()
    ]


def reference_image(reference_dir: Path, category: str, key: str) -> Path | None:
    from illume.eval.suites.fid import IMAGE_SUFFIXES

    for suffix in IMAGE_SUFFIXES:
        candidate = reference_dir / category / f"{key}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _score(args: Any, items: list[tuple[str, str, str]], images_dir: Path, device: Any) -> dict[str, Any]:
    from illume.eval.suites.fid import extract_features, feature_extractor, fid_of_features

    pairs = []
    for key, category, _ in items:
        made = images_dir / category / f"{key}.png"
        if made.is_file():
            photo = reference_image(args.reference_dir, category, key)
            if photo is None:
                raise UserError(f"--reference-dir {args.reference_dir}: no image for {category}/{key}")
            pairs.append((category, made, photo))
    extractor = feature_extractor(args.features, args.inception_weights, device)
    generated = extract_features([g for _, g, _ in pairs], extractor, args.fid_batch_size)
    reference = extract_features([r for _, _, r in pairs], extractor, args.fid_batch_size)
    categories = sorted({c for c, _, _ in pairs})
    per_category = {}
    for category in categories:
        rows = [i for i, (c, _, _) in enumerate(pairs) if c == category]
        per_category[category] = fid_of_features(generated[rows], reference[rows]).to_dict()
    return {
        "features": args.features,
        "reference_dir": str(args.reference_dir),
        "overall": fid_of_features(generated, reference).to_dict(),
        "per_category": per_category,
    }


def run(args: Any) -> int:
    items = read_meta(args.meta)
    images_dir: Path = args.output_dir / "images"
    jobs = [
        T2IJob(f"{category}/{key}", prompt, 1, args.seed + i)
        for i, (key, category, prompt) in enumerate(items)
    ]
    shard = run_generation_suite(
        args,
        "mjhq-fid",
        jobs,
        inputs={"meta": fingerprint(args.meta)},
        settings={"samples": 1},
        is_done=lambda job: (images_dir / f"{job.key}.png").is_file(),
        write=lambda job, images: atomic_save(images[0], images_dir / f"{job.key}.png"),
    )
    if shard.is_main:
        if args.reference_dir is None:
            print(f"MJHQ-30k images in {images_dir}; give --reference-dir mjhq30k_imgs to compute the FID")
        else:
            chosen = items if args.limit is None else items[: args.limit]
            report = _score(args, chosen, images_dir, shard.device)
            (args.output_dir / "fid.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            print(f"MJHQ-30k FID {report['overall']['fid']} (written to {args.output_dir / 'fid.json'})")
    return 0
