"""Tokenize generation / editing datasets for MLLM training (codebook inference).

    torchrun --nproc_per_node N -m vision_tokenizer.codebook_inference --model_config CFG
        --tokenizer_checkpoint CKPT --data_config META.json [--resolution_type fixed --resolution 256]

For every dataset of the meta-data config with `"tokenizer_inference": true` and every
`*.jsonl` / `*.json` file below its `annotation_dir`, each record's images (from `image_dir`)
are matched to an anchor size (`fixed`: R x R; `fixed_anchors`: the 11 `RATIOS`), Lanczos
cover-resized and centre-cropped to it, run through the `data_args.inference` transform and
encoded in batches of images of equal size. Outputs, below `{root}/{output_dirname}/{tokenizer_version}/`:
* `{version}/{same relative path}.jsonl`: each tokenized record plus `image_sizes` ([h, w] of the
  originals), `image_embed_inds` ([semantic grid, pixel grid] per image, grids as lists of rows)
  and `matched_ratios` ([H, W] anchors), in input order; `version` is `fixed_{R}` or `fixed_anchors`;
* `{version}_skipped.jsonl`: every record that was not tokenized, with `file`, `line` (1-based
  line of a .jsonl, or `item` index of a .json list) and `reason` (malformed JSON, unreadable
  image, crop above `--crop_percent_thresh`, ...); each is also logged;
* `{root}/{output_dirname}/{version}_data_statistic.json`: records per anchor (`ratio_h{H}_w{W}`,
  `ratio_mixed` when a record's images differ) summed over all files of the dataset.
Relative folders in the meta-data config are resolved against the config file's directory.

Work is split over ranks record by record. Each rank appends finished records to its own part
file (in `{version}_work/`) after every batch; `--resume` continues from those parts, and a file
whose merged output exists is skipped. Without `--resume`, earlier results are replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vision_tokenizer.data.image_io import ImageLoadError, load_image
from vision_tokenizer.data.meta_config import DatasetMeta, load_meta_data_config
from vision_tokenizer.data.records import check_record, record_images
from vision_tokenizer.data.transforms import RATIOS, AspectRatioCrop, build_transform
from vision_tokenizer.job_args import codebook_inference_parser
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.runtime.atomic import atomic_write_jsonl, atomic_write_text
from vision_tokenizer.runtime.distributed import DTYPES, DistContext, init_distributed
from vision_tokenizer.runtime.jsonl import RecordError, decode, iter_raw
from vision_tokenizer.runtime.sharded_jsonl import ShardedJsonlWriter
from vision_tokenizer.utils.config import load_config

__all__ = ["main", "build_parser", "read_annotation_records", "AnnotationRecord"]

logger = logging.getLogger(__name__)

_SUFFIXES = (".jsonl", ".json")
# Records handed to the encoder between two writes of the part file (the resume granularity).
_CHUNK_RECORDS = 64


@dataclass
class AnnotationRecord:
    """One input record with its location; `error` is set when it could not be parsed."""

    file: str
    position: int  # 1-based line (.jsonl) or 0-based item index (.json)
    record: dict[str, Any] | None = None
    error: str | None = None
    is_item: bool = False

    def location(self) -> dict[str, Any]:
        return {"file": self.file, "item" if self.is_item else "line": self.position}


@dataclass
class _Prepared:
    record: AnnotationRecord
    tensors: list[torch.Tensor] = field(default_factory=list)
    sizes: list[list[int]] = field(default_factory=list)
    anchors: list[list[int]] = field(default_factory=list)


def read_annotation_records(path: Path) -> list[AnnotationRecord]:
    """Every record of a .jsonl (one per non-empty line) or .json (a list) file, broken ones included.

    Read with the project's jsonl reader and checked with the training rules
    (`vision_tokenizer.data.records.check_record`), so nothing training would reject is encoded.
    """
    records = []
    try:
        for location, raw in iter_raw(path):
            entry = AnnotationRecord(location.path, location.line, is_item=location.is_item)
            try:
                value = decode(raw, location)
                if not check_record(value)[0]:
                    raise ValueError("record has no 'images'")
            except (RecordError, ValueError) as error:
                entry.error = error.reason if isinstance(error, RecordError) else str(error)
            else:
                entry.record = value
            records.append(entry)
    except RecordError as error:  # a .json file that is not a readable list
        records.append(AnnotationRecord(str(path), int(error.location.rsplit(":", 1)[-1]), error=error.reason))
    return records


def _load_meta(path: str) -> dict[str, DatasetMeta]:
    """The datasets of the meta-data config that need codebook inference."""
    try:
        metas = load_meta_data_config(path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--data_config: {error}") from None
    return {name: meta for name, meta in metas.items() if meta.tokenizer_inference}


class CodebookInference:
    """Runs the whole job for one rank; see the module docstring."""

    def __init__(self, args: argparse.Namespace, ctx: DistContext) -> None:
        self.args = args
        self.ctx = ctx
        if args.batch_size < 1:
            raise SystemExit("--batch_size must be >= 1")
        if args.resolution_type == "fixed":
            anchors, self.version = [(args.resolution, args.resolution)], f"fixed_{args.resolution}"
        else:
            anchors, self.version = list(RATIOS), "fixed_anchors"
        self.cropper = AspectRatioCrop(anchors, args.crop_percent_thresh)
        cfg = load_config(args.model_config)
        inference = cfg.get("data_args", {}).get("inference") or {
            "augment": {"type": "dualvitok_anyres_inference"}
        }
        self.transform = build_transform(inference["augment"], inference.get("resolution", args.resolution))
        self.dtype = DTYPES[args.torch_dtype]
        self.model = (
            DualViTok.from_pretrained(
                args.tokenizer_checkpoint, use_ema=args.use_ema, config=args.model_config, device=ctx.device
            )
            .to(device=ctx.device, dtype=self.dtype)
            .eval()
        )

    # ---- per image / record ---------------------------------------------------------------
    def prepare(self, entry: AnnotationRecord, image_dir: Path) -> _Prepared | dict[str, Any]:
        """Load and crop a record's images, or return the skip report for it."""
        if entry.error:
            return {**entry.location(), "reason": entry.error}
        names = record_images(entry.record)
        prepared = _Prepared(entry)
        for name in names:
            path = image_dir / name
            try:
                image = load_image(path)
            except ImageLoadError as error:
                return {**entry.location(), "image": str(path), "reason": f"unreadable image: {error.reason}"}
            found = self.cropper.match(image.height, image.width)
            if found.exceeds(self.cropper.crop_percent_thresh):
                return {
                    **entry.location(),
                    "image": str(path),
                    "reason": (
                        f"crop {found.crop_fraction:.3f} > crop_percent_thresh {self.cropper.crop_percent_thresh} "
                        f"for a {image.height}x{image.width} image and anchor {found.anchor[0]}x{found.anchor[1]}"
                    ),
                }
            cropped, _ = self.cropper(image)
            try:
                tensor = self.transform(cropped, random.Random(0))
            except (ValueError, OSError) as error:
                return {**entry.location(), "image": str(path), "reason": f"transform failed: {error}"}
            prepared.tensors.append(tensor)
            prepared.sizes.append([image.height, image.width])
            prepared.anchors.append(list(found.anchor))
        return prepared

    @torch.inference_mode()
    def encode(self, prepared: list[_Prepared]) -> list[dict[str, Any]]:
        """Encode every image of the chunk in batches of equal shape; returns the output records."""
        grids: dict[tuple[int, int], list[list[list[int]]]] = {}
        by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = {}
        for r, item in enumerate(prepared):
            for i, tensor in enumerate(item.tensors):
                by_shape.setdefault(tuple(tensor.shape), []).append((r, i))
        for keys in by_shape.values():
            for start in range(0, len(keys), self.args.batch_size):
                chunk = keys[start : start + self.args.batch_size]
                batch = torch.cat([prepared[r].tensors[i] for r, i in chunk]).to(
                    self.ctx.device, dtype=self.dtype
                )
                idx_semantic, idx_pixel = self.model.encode_code(batch)
                for row, key in enumerate(chunk):
                    grids[key] = [idx_semantic[row].tolist(), idx_pixel[row].tolist()]
        outputs = []
        for r, item in enumerate(prepared):
            record = dict(item.record.record)
            record["image_sizes"] = item.sizes
            record["image_embed_inds"] = [grids[(r, i)] for i in range(len(item.tensors))]
            record["matched_ratios"] = item.anchors
            outputs.append(record)
        return outputs

    # ---- per file -------------------------------------------------------------------------
    def _writer(self, work: Path, resume: bool) -> ShardedJsonlWriter:
        return ShardedJsonlWriter(
            work.parent,
            work.name,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
            key="position",
            resume=resume,
        )

    def process_file(self, source: Path, image_dir: Path, work: Path) -> None:
        """Tokenize this rank's share of `source`, appending results to its part file."""
        records = read_annotation_records(source)
        writer = self._writer(work, self.args.resume)
        done = writer.done_keys()
        todo = [
            entry for entry in records[self.ctx.rank :: self.ctx.world_size] if entry.position not in done
        ]
        for start in range(0, len(todo), _CHUNK_RECORDS):
            lines = []
            prepared = []
            for entry in todo[start : start + _CHUNK_RECORDS]:
                result = self.prepare(entry, image_dir)
                if isinstance(result, dict):
                    logger.warning("skipped %s:%s: %s", entry.file, entry.position, result["reason"])
                    lines.append({"position": entry.position, "skipped": result})
                else:
                    prepared.append(result)
            for item, record in zip(prepared, self.encode(prepared)):
                lines.append({"position": item.record.position, "record": record})
            lines.sort(key=lambda entry: entry["position"])
            writer.append(lines)

    def merge_file(self, work: Path, output: Path, skipped_store: Path) -> None:
        """Rank 0: join the parts in input order into the output and the file's skip list."""

        def publish(entries: list[dict[str, Any]]) -> None:
            atomic_write_jsonl(skipped_store, [e["skipped"] for e in entries if "skipped" in e])
            atomic_write_jsonl(output, [e["record"] for e in entries if "record" in e])

        self._writer(work, resume=True).merge(write=publish, remove_parts=True)

    # ---- per dataset ----------------------------------------------------------------------
    def run_dataset(self, name: str, folders: DatasetMeta) -> dict[str, int]:
        annotation_dir = folders.annotation_dir
        if not annotation_dir.is_dir():
            raise SystemExit(f"dataset {name!r}: annotation_dir not found: {annotation_dir}")
        files = sorted(p for p in annotation_dir.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
        base = folders.root / self.args.output_dirname / self.args.tokenizer_version
        out_root, work_root = base / self.version, base / f"{self.version}_work"
        for source in files:
            relative = source.relative_to(annotation_dir).with_suffix(".jsonl")
            output = out_root / relative
            if self.args.resume and output.exists():
                logger.info("%s: already tokenized (%s)", source, output)
                continue
            self.process_file(source, folders.image_dir, work_root / relative)
            self.ctx.barrier()
            if self.ctx.is_main:
                self.merge_file(
                    work_root / relative, output, work_root / relative.with_suffix(".skipped.jsonl")
                )
            self.ctx.barrier()
        if not self.ctx.is_main:
            return {}
        return self._summarise(name, folders, files, annotation_dir, out_root, work_root)

    def _summarise(
        self,
        name: str,
        folders: dict[str, Path],
        files: list[Path],
        annotation_dir: Path,
        out_root: Path,
        work_root: Path,
    ) -> dict[str, int]:
        statistics: Counter[str] = Counter()
        skipped: list[dict[str, Any]] = []
        for source in files:
            relative = source.relative_to(annotation_dir).with_suffix(".jsonl")
            for record in _read_lines(out_root / relative):
                ratios = {tuple(r) for r in record["matched_ratios"]}
                statistics["ratio_mixed" if len(ratios) > 1 else "ratio_h{}_w{}".format(*ratios.pop())] += 1
            skipped += _read_lines(work_root / relative.with_suffix(".skipped.jsonl"))
        stats_path = folders.root / self.args.output_dirname / f"{self.version}_data_statistic.json"
        atomic_write_text(stats_path, json.dumps(dict(sorted(statistics.items())), indent=2))
        atomic_write_jsonl(out_root.parent / f"{self.version}_skipped.jsonl", skipped)
        logger.info(
            "dataset %s: %d records read, %d tokenized, %d skipped (see %s)",
            name,
            sum(statistics.values()) + len(skipped),
            sum(statistics.values()),
            len(skipped),
            out_root.parent / f"{self.version}_skipped.jsonl",
        )
        return {"tokenized": sum(statistics.values()), "skipped": len(skipped)}

    def run(self) -> dict[str, dict[str, int]]:
        summary = {}
        for name, folders in _load_meta(self.args.data_config).items():
            summary[name] = self.run_dataset(name, folders)
        return summary


def _read_lines(path: Path) -> Iterator[dict[str, Any]]:
    if path.exists():
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def build_parser() -> argparse.ArgumentParser:
    return codebook_inference_parser()  # defined without torch: `dualvitok codebook-inference --help` is instant


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, int]]:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    ctx = init_distributed(args.device)
    try:
        return CodebookInference(args, ctx).run()
    finally:
        ctx.close()


if __name__ == "__main__":
    from vision_tokenizer.utils.user_errors import run_cli

    sys.exit(run_cli("python -m vision_tokenizer.codebook_inference", main))
