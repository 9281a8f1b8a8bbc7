"""What every benchmark runner shares: sharding, resume, the settings record and the batched loops.

A run is a list of jobs (one benchmark item each). Ranks take `jobs[rank::world]` of the first
`--limit` jobs; a job whose output files already exist is skipped, so a restart continues where
the last run stopped and never regenerates a finished item. Images are written atomically (a
temporary name, then a rename), so a file that exists is complete.

The settings that decide the outputs (model fingerprints, sampling, seeds, resolution,
speculative/quantize options, inputs) are stored in `eval_settings.json` beside the outputs; a
restart with different settings stops with the differing keys instead of mixing two runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm
from vision_tokenizer.runtime.atomic import atomic_write, atomic_write_text
from vision_tokenizer.utils.user_errors import UserError

__all__ = [
    "SETTINGS_FILE",
    "LOG_DIR",
    "Shard",
    "open_shard",
    "fingerprint",
    "record_settings",
    "atomic_save",
    "ShardLog",
    "ImageOptions",
    "load_pipeline",
    "T2IJob",
    "EditJob",
    "run_t2i",
    "run_edit",
    "select_jobs",
    "SAFE_NAME",
    "read_entries",
    "image_options",
    "model_record",
    "run_generation_suite",
    "run_editing_suite",
]

SETTINGS_FILE = "eval_settings.json"
LOG_DIR = "eval_log"
_HASHED_BYTES = 4 << 20  # files up to 4 MiB (configs, tokenizers, metadata) get a real sha256


# ---------------------------------------------------------------------------------------------
# ranks
@dataclass(frozen=True)
class Shard:
    """This process's place in the run: `rank` of `world_size`, and the device it computes on.

    Ranks share nothing but the output folder, so no process group is joined: rank 0 waits for
    the others by watching their output files (`wait_for`), which has no collective timeout to
    trip when ranks resume with very different amounts of work left (torchrun stops every rank
    when one fails).
    """

    rank: int
    world_size: int
    device: Any

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wait_for(
        self, jobs: Sequence[Any], is_done: Callable[[Any], bool], poll_seconds: float = 2.0
    ) -> None:
        """Return once every job is done (on one rank: at once, they are)."""
        remaining = [job for job in jobs if not is_done(job)]
        reported = time.monotonic()
        while remaining:
            if time.monotonic() - reported > 60:
                print(
                    f"rank {self.rank}: waiting for {len(remaining)} item(s) of the other ranks", flush=True
                )
                reported = time.monotonic()
            time.sleep(poll_seconds)
            remaining = [job for job in remaining if not is_done(job)]


def open_shard(device: str | None = None) -> Shard:
    """This rank under torchrun (RANK / WORLD_SIZE / LOCAL_RANK) and its device (GPU, NPU or CPU)."""
    from vision_tokenizer.runtime.distributed import init_distributed

    context = init_distributed(device, join=False)
    return Shard(context.rank, context.world_size, context.device)


def select_jobs(jobs: Sequence[Any], limit: int | None) -> list[Any]:
    """The first `limit` jobs (all when None); rank r then takes `[r::world_size]` of them."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be a positive number of items, got {limit}")
    return list(jobs) if limit is None else list(jobs)[:limit]


# ---------------------------------------------------------------------------------------------
# benchmark files
SAFE_NAME = str.maketrans({"/": "_", "\\": "_"})  # ids become file names: no folder separators


def read_entries(path: Path, flag: str, source: str, fields: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A benchmark's JSON object `{key: {field: str, ...}}`; every mistake is one line naming `flag`."""
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file ({source})")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{flag} {path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(table, dict):
        raise UserError(f"{flag} {path}: expected an object {{key: {{{', '.join(fields)}}}}}")
    for key, entry in table.items():
        if not isinstance(entry, dict) or not all(isinstance(entry.get(f), str) for f in fields):
            raise UserError(f"{flag} {path}: entry {key!r} needs string fields {list(fields)}")
    return table


# ---------------------------------------------------------------------------------------------
# settings record
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """Identify a model or input (file or folder) by content without reading gigabytes.

    Small files (configs, tokenizer, metadata) are hashed; large weight files are identified by
    size (and their mtime is kept for information). `digest` covers names, sizes and hashes only,
    so copying a checkpoint elsewhere keeps its digest.
    """
    if path is None:
        return None
    root = Path(path)
    if not root.exists():
        raise UserError(f"{root}: no such file or folder")
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    entries = []
    for file in files:
        stat = file.stat()
        entry: dict[str, Any] = {"file": file.relative_to(root).as_posix() if root.is_dir() else file.name}
        entry["size"] = stat.st_size
        if stat.st_size <= _HASHED_BYTES:
            entry["sha256"] = _sha256(file)
        else:
            entry["mtime"] = stat.st_mtime
        entries.append(entry)
    content = [{k: v for k, v in e.items() if k != "mtime"} for e in entries]
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {"path": str(root.resolve()), "digest": digest, "files": entries}


def _comparable(generation: dict[str, Any]) -> dict[str, Any]:
    """The settings with fingerprints reduced to their digests (paths and mtimes may change)."""

    def reduce(value: Any) -> Any:
        if isinstance(value, dict) and "digest" in value and "files" in value:
            return value["digest"]
        if isinstance(value, dict):
            return {k: reduce(v) for k, v in value.items()}
        return value

    return reduce(json.loads(json.dumps(generation, default=str)))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            found += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [] if old == new else [f"{prefix[:-1]}: {old!r} -> {new!r}"]


def record_settings(
    output_dir: Path, suite: str, generation: dict[str, Any], shard: Shard, **run: Any
) -> Path:
    """Write (rank 0) or check `eval_settings.json`; refuse to resume a run made with other settings."""
    path = output_dir / SETTINGS_FILE
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = _differences(_comparable(previous.get("generation", {})), _comparable(generation))
        if previous.get("suite") != suite:
            changed.insert(0, f"suite: {previous.get('suite')!r} -> {suite!r}")
        if changed:
            raise UserError(
                f"--output-dir {output_dir} holds a run with other settings ({'; '.join(changed[:5])}); "
                "use a new --output-dir, or delete it to start over"
            )
    if shard.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "suite": suite,
            "generation": json.loads(json.dumps(generation, default=str)),
            "run": {**run, "world_size": shard.world_size, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")},
        }
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# outputs
def atomic_save(image: Image.Image, path: Path) -> None:
    """Save a PNG so that the file either does not exist or is complete (restarts trust existence)."""
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


class ShardLog:
    """Which rank made which item and how long it took: `eval_log/items.rank{R}of{W}.jsonl`.

    Rows go through the project's sharded jsonl writer; `merge` (rank 0, once all items exist)
    publishes `eval_log/items.jsonl` once every selected item has a row.
    """

    def __init__(self, output_dir: Path, shard: Shard) -> None:
        from vision_tokenizer.runtime.sharded_jsonl import ShardedJsonlWriter

        self.rank = shard.rank
        self.writer = ShardedJsonlWriter(
            output_dir / LOG_DIR, "items", rank=shard.rank, world_size=shard.world_size, key="key"
        )

    def append(self, key: str, seconds: float) -> None:
        self.writer.append([{"key": key, "rank": self.rank, "seconds": round(seconds, 4)}])

    def merge(self, keys: Sequence[str]) -> bool:
        return self.writer.merge(expected=set(keys))


# ---------------------------------------------------------------------------------------------
# the model
@dataclass(frozen=True)
class ImageOptions:
    """Sampling and decoding of generated images, as recorded in the settings."""

    cfg_scale: float
    temperature: float
    top_k: int
    top_p: float
    official_double_sampling: bool = False
    decoder: str = "dualvitok"
    diffusion_cfg_scale: float = 2.0
    diffusion_steps: int = 50
    batch_size: int = 8
    seed: int = 42
    speculative: str = "jacobi"

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Keywords for `IllumePipeline.generate` / `edit`: every option but the batching and the seed."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_size", "seed")}

    def record(self) -> dict[str, Any]:
        """What decides the images; the batch size does not (a row depends only on its own seed)."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


def load_pipeline(args: Any, shard: Shard) -> Any:
    from illume.inference import IllumePipeline

    if args.decoder == "sdxl" and not args.sdxl_decoder:
        raise UserError("--decoder sdxl needs --sdxl-decoder FOLDER (the released SDXL decoder)")
    return IllumePipeline.from_pretrained(
        args.model,
        dualvitok=args.dualvitok,
        dualvitok_config=args.dualvitok_config,
        sdxl_decoder=args.sdxl_decoder,
        device=args.device or shard.device,
        dtype=None if args.dtype == "auto" else args.dtype,
        use_cuda_graphs=False if args.no_cuda_graphs else None,
        quantize=args.quantize,
        offload=args.offload,
    )


def model_record(args: Any, device: Any) -> dict[str, Any]:
    """Fingerprints of the models and the precision they run in (`auto` resolved for this device)."""
    import torch

    from illume.inference.pipeline import resolve_dtype

    chosen = torch.device(args.device) if args.device else torch.device(device)
    return {
        "mllm": fingerprint(args.model),
        "dualvitok": fingerprint(args.dualvitok),
        "dualvitok_config": fingerprint(args.dualvitok_config),
        "sdxl_decoder": fingerprint(args.sdxl_decoder) if args.decoder == "sdxl" else None,
        "dtype": str(resolve_dtype(None if args.dtype == "auto" else args.dtype, chosen)).removeprefix(
            "torch."
        ),
        "quantize": args.quantize,  # weight-only LLM quantization changes the numbers
    }


# ---------------------------------------------------------------------------------------------
# batched loops
@dataclass(frozen=True)
class T2IJob:
    """One prompt with `samples` images; sample k uses seed `seed + k`."""

    key: str
    prompt: str
    samples: int
    seed: int


def _chunks(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    if size < 1:
        raise UserError(f"--batch-size must be at least 1, got {size}")
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _bar(total: int, desc: str, shard: Shard) -> tqdm:
    label = f"{desc} [rank {shard.rank}/{shard.world_size}]" if shard.world_size > 1 else desc
    return tqdm(total=total, desc=label, unit="item", dynamic_ncols=True)


def run_t2i(
    pipe: Any,
    jobs: Sequence[T2IJob],
    *,
    resolution: tuple[int, int],
    options: ImageOptions,
    is_done: Callable[[T2IJob], bool],
    write: Callable[[T2IJob, list[Image.Image]], None],
    log: ShardLog,
    shard: Shard,
    desc: str,
) -> int:
    """Generate every sample of the unfinished jobs, `batch_size` rows per pipeline call.

    A job's images are written together once all its samples exist; returns the number of jobs made.
    """
    pending = [job for job in jobs if not is_done(job)]
    rows = [(job, k) for job in pending for k in range(job.samples)]
    made: dict[str, list[Image.Image]] = {}
    started = time.perf_counter()
    bar = _bar(len(pending), desc, shard)
    for batch in _chunks(rows, options.batch_size):
        images = pipe.generate(
            [job.prompt for job, _ in batch],
            resolution=resolution,
            seed=[job.seed + k for job, k in batch],
            batch_size=len(batch),
            **options.pipeline_kwargs(),
        )
        for (job, _), image in zip(batch, images):
            made.setdefault(job.key, []).append(image)
            if len(made[job.key]) == job.samples:
                write(job, made.pop(job.key))
                log.append(job.key, time.perf_counter() - started)
                started = time.perf_counter()
                bar.update(1)
    bar.close()
    return len(pending)


@dataclass(frozen=True)
class EditJob:
    """One editing item: the instruction, the input image (read when its batch runs) and its seed."""

    key: str
    instruction: str
    seed: int
    size: tuple[int, int]  # input (W, H), for grouping by anchor without decoding the image
    load: Callable[[], Image.Image]


def run_edit(
    pipe: Any,
    jobs: Sequence[EditJob],
    *,
    anchors: Sequence[tuple[int, int]],
    resolution: tuple[int, int] | None,
    options: ImageOptions,
    is_done: Callable[[EditJob], bool],
    write: Callable[[EditJob, Image.Image], None],
    log: ShardLog,
    shard: Shard,
    desc: str,
) -> int:
    """Edit the unfinished jobs in batches of inputs that share an anchor (same token grid).

    Grouping keeps every row of a batch at one sequence length, so batches waste no decoding
    steps on padding rows; outputs are mapped back to each input's size.
    """
    from vision_tokenizer.data.transforms import AspectRatioCrop

    pending = [job for job in jobs if not is_done(job)]
    matcher = AspectRatioCrop(list(anchors))
    groups: dict[tuple[int, int], list[EditJob]] = {}
    for job in pending:
        anchor = resolution or matcher.match(job.size[1], job.size[0]).anchor
        groups.setdefault(tuple(anchor), []).append(job)
    bar = _bar(len(pending), desc, shard)
    for anchor, members in groups.items():
        for batch in _chunks(members, options.batch_size):
            started = time.perf_counter()
            outputs = pipe.edit(
                [job.load() for job in batch],
                [job.instruction for job in batch],
                resolution=anchor,
                seed=[job.seed for job in batch],
                batch_size=len(batch),
                **options.pipeline_kwargs(),
            )
            seconds = (time.perf_counter() - started) / len(batch)
            for job, image in zip(batch, outputs):
                write(job, image)
                log.append(job.key, seconds)
                bar.update(1)
    bar.close()
    return len(pending)


# ---------------------------------------------------------------------------------------------
# the whole run of a suite
def image_options(args: Any) -> ImageOptions:
    """The options from the parsed flags (each field has a flag of the same name)."""
    return ImageOptions(**{f.name: getattr(args, f.name) for f in fields(ImageOptions)})


def _run_suite(
    args: Any,
    suite: str,
    jobs: Sequence[Any],
    generation: dict[str, Any],
    is_done: Callable,
    loop: Callable,
) -> Shard:
    options = image_options(args)
    shard = open_shard(args.device)
    generation = {"models": model_record(args, shard.device), "sampling": options.record(), **generation}
    record_settings(
        args.output_dir, suite, generation, shard,
        limit=args.limit, batch_size=args.batch_size, device=str(args.device or shard.device),
        offload=args.offload,
    )  # fmt: skip
    chosen = select_jobs(jobs, args.limit)
    mine = chosen[shard.rank :: shard.world_size]
    log = ShardLog(args.output_dir, shard)
    if any(not is_done(job) for job in mine):
        loop(load_pipeline(args, shard), mine, options, log, shard)
    if shard.is_main:
        shard.wait_for(chosen, is_done)
        log.merge([job.key for job in chosen])
    return shard


def run_generation_suite(
    args: Any,
    suite: str,
    jobs: Sequence[T2IJob],
    *,
    inputs: dict[str, Any],
    settings: dict[str, Any],
    is_done: Callable[[T2IJob], bool],
    write: Callable[[T2IJob, list[Image.Image]], None],
) -> Shard:
    """Record the settings, load the model (only if this rank has work) and run the text-to-image loop."""

    def loop(pipe: Any, mine: list[T2IJob], options: ImageOptions, log: ShardLog, shard: Shard) -> None:
        run_t2i(
            pipe, mine, resolution=args.resolution, options=options, is_done=is_done, write=write,
            log=log, shard=shard, desc=suite,
        )  # fmt: skip

    generation = {"inputs": inputs, "resolution": args.resolution, **settings}
    return _run_suite(args, suite, jobs, generation, is_done, loop)


def run_editing_suite(
    args: Any,
    suite: str,
    jobs: Sequence[EditJob],
    *,
    inputs: dict[str, Any],
    is_done: Callable[[EditJob], bool],
    write: Callable[[EditJob, Image.Image], None],
) -> Shard:
    """Record the settings, load the model (only if this rank has work) and run the editing loop."""

    def loop(pipe: Any, mine: list[EditJob], options: ImageOptions, log: ShardLog, shard: Shard) -> None:
        run_edit(
            pipe, mine, anchors=args.anchors, resolution=args.resolution, options=options,
            is_done=is_done, write=write, log=log, shard=shard, desc=suite,
        )  # fmt: skip

    generation = {"inputs": inputs, "resolution": args.resolution, "anchors": [list(a) for a in args.anchors]}
    return _run_suite(args, suite, jobs, generation, is_done, loop)
