"""The quick-start stages. Each takes the settings, its `StageContext` and what earlier stages
recorded, calls the project's own entry points, and returns a JSON-able record of its results.

data → tokenizer (vision_tokenizer.train) → codebooks (vision_tokenizer.codebook_inference) →
llm (BPE + random Qwen2 + illume.model.extend) → mllm (torchrun ILLUME/illume/train/train.py) →
inference (IllumePipeline: generate, edit, understand).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from vision_tokenizer.utils.config import load_config

from illume.quickstart import STAGES
from illume.quickstart.evaluation import photo_at, psnr_between, psnr_summary, reconstruct
from illume.quickstart.example_data import DATASET_NAMES, build_example_data, select_photos
from illume.quickstart.runner import StageContext
from illume.quickstart.settings import QuickstartSettings
from illume.quickstart.threads import threads_per_process

__all__ = [
    "STAGES",
    "TOKENIZER_VERSION",
    "build_data",
    "train_tokenizer",
    "tokenize_datasets",
    "build_llm",
    "train_mllm",
    "run_inference",
]

logger = logging.getLogger(__name__)

TOKENIZER_VERSION = "dualvitok"


def _codebook_dir(resolution: int) -> str:
    """Where codebook inference puts the tokenized records, relative to each dataset root."""
    return f"jsonl_after_tokenizer/{TOKENIZER_VERSION}/fixed_{resolution}/"


def _photo_paths(data: dict[str, Any]) -> dict[str, Path]:
    return {name: Path(data["image_dir"]) / f"{name}.png" for name in data["photos"]}


# ---------------------------------------------------------------------------------------------
def build_data(settings: QuickstartSettings, ctx: StageContext) -> dict[str, Any]:
    """Photos, edits and the three datasets' raw jsonl files (official layout)."""
    photos = select_photos(settings.photos)
    data = build_example_data(ctx.directory, settings.photo_size, settings.edits_per_photo, photos)
    return {
        "root": str(data.root),
        "meta_config": str(data.meta_config),
        "image_dir": str(data.image_dir),
        "photos": [photo.name for photo in data.photos],
        "captions": {photo.name: photo.caption for photo in data.photos},
        "edits": [list(edit) for edit in data.edits],
    }


# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _restored_logging():
    """Undo the tokenizer trainer's logging set-up (it sends everything to its own log.txt)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _mean_psnr(model: Any, photos: list[Any]) -> tuple[float, list[Any]]:
    reconstructions = reconstruct(model, photos)
    values = [psnr_between(a, b) for a, b in zip(reconstructions, photos)]
    return sum(values) / len(values), reconstructions


def train_tokenizer(settings: QuickstartSettings, ctx: StageContext, data: dict[str, Any]) -> dict[str, Any]:
    """Train DualViTok from scratch on the photos and edits; PSNR of the photos before and after."""
    from vision_tokenizer.models.dualvitok import DualViTok
    from vision_tokenizer.runtime.checkpoints import CheckpointDir
    from vision_tokenizer.train import train
    from vision_tokenizer.train.loop import plain_config

    res = settings.resolution
    cfg = load_config(settings.path(settings.tokenizer_config))
    cfg.results_dir = str(ctx.directory / "run")
    cfg.data_args.train.dataset = [dict(dataset="folder", data_path=data["image_dir"])]
    cfg.data_args.train.resolution = res
    cfg.data_args.val.data_path = data["image_dir"]
    cfg.data_args.val.resolution = res
    cfg.data_args.inference.resolution = res
    cfg.max_steps = settings.tokenizer_steps
    cfg.ckpt_every = min(int(cfg.ckpt_every), settings.tokenizer_steps)
    cfg.global_seed = settings.seed
    cfg.resume = "latest"
    spec = plain_config(cfg.vq_model)

    photos = [photo_at(path, res) for path in _photo_paths(data).values()]
    torch.manual_seed(settings.seed)  # the training run's rank-0 initialisation
    before, _ = _mean_psnr(DualViTok.from_config(spec), photos)

    with _restored_logging():
        result = train(cfg, device="cpu")
    newest = CheckpointDir(os.path.join(result["run_dir"], "checkpoints")).latest()
    checkpoint = result["checkpoint"] or (str(newest.checkpoint.path) if newest else None)
    if checkpoint is None:
        raise RuntimeError(f"tokenizer training left no checkpoint in {result['run_dir']}")
    model = DualViTok.from_pretrained(checkpoint, config=spec)
    model_dir = ctx.directory / TOKENIZER_VERSION
    model.save_pretrained(model_dir)
    after, reconstructions = _mean_psnr(model, photos)

    recon_dir = ctx.directory / "reconstructions"
    recon_dir.mkdir(exist_ok=True)
    for name, image in zip(data["photos"], reconstructions):
        image.save(recon_dir / f"{name}.png")
    return {
        "model_dir": str(model_dir),
        "run_dir": result["run_dir"],
        "metrics": str(Path(result["run_dir"]) / "metrics.jsonl"),
        "steps": int(result["steps"]),
        "psnr_before": before,
        "psnr_after": after,
        "reconstructions": str(recon_dir),
        "codebook_sizes": [
            int(spec["config"]["semantic_quantizer"]["codebook_size"]),
            int(spec["config"]["pixel_quantizer"]["codebook_size"]),
        ],
    }


# ---------------------------------------------------------------------------------------------
def tokenize_datasets(
    settings: QuickstartSettings, ctx: StageContext, data: dict[str, Any], tokenizer: dict[str, Any]
) -> dict[str, Any]:
    """Codebook inference on the generation and editing datasets (jsonl after tokenizer)."""
    from vision_tokenizer.codebook_inference import main as codebook_inference

    if not ctx.resume:  # codes of an earlier tokenizer must not be taken for finished work
        for name in (DATASET_NAMES["generation"], DATASET_NAMES["editing"]):
            stale = Path(data["root"]) / name / "jsonl_after_tokenizer" / TOKENIZER_VERSION
            if stale.exists():
                shutil.rmtree(stale)
    model_dir = Path(tokenizer["model_dir"])
    argv = [
        "--config", str(model_dir / "config.json"),
        "--dualvitok", str(model_dir),
        "--tokenizer-version", TOKENIZER_VERSION,
        "--data-config", data["meta_config"],
        "--resolution-type", "fixed",
        "--resolution", str(settings.resolution),
        "--device", "cpu",
    ]  # fmt: skip
    summary = codebook_inference(argv + (["--resume"] if ctx.resume else []))
    skipped = {name: counts["skipped"] for name, counts in summary.items() if counts.get("skipped")}
    if skipped:
        raise RuntimeError(f"codebook inference skipped records {skipped}; see the *_skipped.jsonl files")
    return {"codebook_dir": _codebook_dir(settings.resolution), "datasets": summary}


# ---------------------------------------------------------------------------------------------
def _training_texts(data: dict[str, Any], settings: QuickstartSettings) -> list[str]:
    """Every conversation turn of the raw datasets, plus the questions asked at the end."""
    texts = list(settings.understanding_questions)
    for name in DATASET_NAMES.values():
        for path in sorted((Path(data["root"]) / name / "jsonl_before_tokenizer").glob("*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                texts += [turn["value"] for turn in json.loads(line)["conversations"]]
    return texts


def build_llm(
    settings: QuickstartSettings, ctx: StageContext, data: dict[str, Any], tokenizer: dict[str, Any]
) -> dict[str, Any]:
    """Small BPE + random Qwen2, then the ILLUME vocabulary extension."""
    from illume.quickstart.tiny_llm import build_extended_llm

    sizes = tuple(tokenizer["codebook_sizes"])
    vocab = build_extended_llm(
        ctx.directory,
        _training_texts(data, settings),
        settings.llm,
        sizes,
        settings.bpe_vocab_size,
        settings.seed,
    )
    return {
        "base_dir": str(ctx.directory / "base"),
        "extended_dir": str(ctx.directory / "extended"),
        "text_tokens": int(vocab.start_of_image),
        "image_token_ids": [int(vocab.start_of_image), int(vocab.level_offsets[1] + sizes[1] - 1)],
    }


# ---------------------------------------------------------------------------------------------
TRAIN_SCRIPT = Path(importlib.util.find_spec("illume").origin).parent / "train" / "train.py"


def mllm_train_config(
    settings: QuickstartSettings,
    out: Path,
    data: dict[str, Any],
    tokenizer: dict[str, Any],
    llm: dict[str, Any],
) -> Any:
    """The MLLM config of the settings file, pointed at this run's data, tokenizer and LLM."""
    res = settings.resolution
    cfg = load_config(settings.path(settings.mllm_config))
    for group in cfg.data_args.meta_data_info_list:
        group.meta_configs = [data["meta_config"]]
        if "codebook_dir" in group:
            group.codebook_dir = _codebook_dir(res)
    cfg.data_args.base_resolution = res
    model_dir = Path(tokenizer["model_dir"])
    cfg.model_args.language_model.pretrained_model_name_or_path = llm["extended_dir"]
    cfg.model_args.mm_vision_tower.vq_config = str(model_dir / "config.json")
    cfg.model_args.mm_vision_tower.vq_ckpt = str(model_dir)
    cfg.model_args.mm_vision_tower.max_pixels = res * res
    args = cfg.training_args
    args.output_dir = str(out / "model")
    args.max_steps = settings.mllm_steps
    args.save_steps = min(int(args.get("save_steps", settings.mllm_steps)), settings.mllm_steps)
    args.seed = settings.seed
    args.use_cpu = True
    for private in [key for key in cfg.keys() if key.startswith("_")]:
        cfg.pop(private)
    return cfg


def train_mllm(
    settings: QuickstartSettings,
    ctx: StageContext,
    data: dict[str, Any],
    tokenizer: dict[str, Any],
    llm: dict[str, Any],
) -> dict[str, Any]:
    """torchrun the MLLM training entry point on the quick-start config (resumes by itself)."""
    cfg = mllm_train_config(settings, ctx.directory, data, tokenizer, llm)
    config_path = ctx.directory / "train_config.py"
    cfg.dump(str(config_path))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={settings.nproc_per_node}", str(TRAIN_SCRIPT), str(config_path),
    ]  # fmt: skip
    # Each worker's torch takes OMP_NUM_THREADS intra-op threads: together they fit the free cores.
    threads = threads_per_process(settings.num_threads, settings.nproc_per_node)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    logger.info("running: torchrun %s", " ".join(command[4:]))
    completed = subprocess.run(command, env=env, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"MLLM training failed with exit code {completed.returncode}: {' '.join(command)}")
    model_dir = Path(cfg.training_args.output_dir)
    return {
        "model_dir": str(model_dir),
        "config": str(config_path),
        "metrics": str(model_dir / "metrics.jsonl"),
        "steps": settings.mllm_steps,
    }


# ---------------------------------------------------------------------------------------------
def run_inference(
    settings: QuickstartSettings,
    ctx: StageContext,
    data: dict[str, Any],
    tokenizer: dict[str, Any],
    mllm: dict[str, Any],
) -> dict[str, Any]:
    """Generate every training caption, apply every training edit, answer the questions."""
    from illume.inference import IllumePipeline

    res = settings.resolution
    pipe = IllumePipeline.from_pretrained(
        mllm["model_dir"], dualvitok=tokenizer["model_dir"], device="cpu", dtype="fp32"
    )
    greedy = dict(cfg_scale=1.0, do_sample=False, seed=settings.seed)
    paths = _photo_paths(data)
    photos = {name: photo_at(path, res) for name, path in paths.items()}
    names = list(photos)
    folders = {kind: ctx.directory / kind for kind in ("generated", "edited")}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    bar = tqdm(total=3, desc="inference", unit="task")

    captions = [data["captions"][name] for name in names]
    generated = pipe.generate(captions, resolution=(res, res), **greedy)
    for name, image in zip(names, generated):
        image.save(folders["generated"] / f"{name}.png")
    generation = psnr_summary(generated, [photos[n] for n in names], settings.seed)
    bar.update()

    sources = [photos[name] for name, _, _ in data["edits"]]
    instructions = [instruction for _, _, instruction in data["edits"]]
    edited = pipe.edit(sources, instructions, resolution=(res, res), unpad=False, **greedy)
    edits = []
    for (name, key, instruction), image, source in zip(data["edits"], edited, sources):
        target = photo_at(Path(data["image_dir"]) / f"{name}_{key}.png", res)
        image.save(folders["edited"] / f"{name}_{key}.png")
        edits.append({
            "photo": name, "edit": key, "instruction": instruction,
            "psnr_target": psnr_between(image, target), "psnr_source": psnr_between(image, source),
        })  # fmt: skip
    bar.update()

    answers = []
    expected = _expected_answers(data)
    for question in settings.understanding_questions:
        replies = pipe.understand(
            [photos[n] for n in names], question, max_new_tokens=settings.max_new_tokens
        )
        for name, reply in zip(names, replies):
            truth = expected.get((name, question))
            answers.append({"photo": name, "question": question, "answer": reply, "expected": truth,
                            "correct": truth is not None and reply.strip() == truth})  # fmt: skip
    bar.update()
    bar.close()
    return {
        "generated_dir": str(folders["generated"]),
        "edited_dir": str(folders["edited"]),
        "generation_psnr": generation,
        "edits": edits,
        "answers": answers,
    }


def _expected_answers(data: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(photo, question) → the training answer, read back from the understanding jsonl."""
    folder = Path(data["root"]) / DATASET_NAMES["understanding"] / "jsonl_before_tokenizer"
    table = {}
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            question = record["conversations"][0]["value"].removeprefix("<image>\n")
            table[(Path(record["images"][0]).stem, question)] = record["conversations"][1]["value"]
    return table
