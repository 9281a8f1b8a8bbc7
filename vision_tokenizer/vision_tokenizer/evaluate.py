"""Reconstruction quality of a DualViTok checkpoint: PSNR, SSIM, rFID and codebook usage.

    torchrun --nproc_per_node N -m vision_tokenizer.evaluate CONFIG --vq-ckpt CKPT [--use-ema]
        [--model-dtype fp32|bf16|fp16] [--data-path DIR] [--out DIR] [--no-fid]

The validation set is `data_args.val` of CONFIG (ImageNet-val layout, Resize 256 + centre crop in
the official configs), sharded over ranks without dropping images. Every reconstruction and
its ground truth are written as `{index:06d}.png` under `OUT/samples` and `OUT/gts`; the metrics
are computed from those 8-bit images (what viewers and FID see):
* PSNR and SSIM with scikit-image on images scaled to [0, 1] with `data_range=1` (the official
  script passed `data_range=2` to SSIM on [0, 1] images);
* rFID (and Inception Score) with torch-fidelity between the two folders, on rank 0. The
  Inception weights come from `--inception-weights` or torch-fidelity's file in the torch hub
  cache; nothing is downloaded (`--no-fid` skips the metric);
* codebook usage of both levels: distinct codes used / codebook size, counted over all ranks.
Results go to `OUT/results.json`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from vision_tokenizer.data.datasets import build_dataset
from vision_tokenizer.data.image_io import tensor_to_uint8
from vision_tokenizer.data.sampler import collate_images
from vision_tokenizer.job_args import evaluate_parser
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.runtime.distributed import DTYPES, DistContext, init_distributed
from vision_tokenizer.utils.config import load_config
from vision_tokenizer.utils.user_errors import UserError

__all__ = ["main", "image_metrics", "find_inception_weights", "INCEPTION_WEIGHTS_FILE"]

logger = logging.getLogger(__name__)

# torch-fidelity's converted TF-Inception weights, as named in the torch hub cache.
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"


def image_metrics(reference: np.ndarray, reconstruction: np.ndarray) -> tuple[float, float]:
    """(PSNR dB, SSIM) of two uint8 HxWx3 images, both scaled to [0, 1] (data range 1)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = reference.astype(np.float64) / 255.0
    rec = reconstruction.astype(np.float64) / 255.0
    psnr = math.inf if np.array_equal(ref, rec) else peak_signal_noise_ratio(ref, rec, data_range=1.0)
    ssim = structural_similarity(ref, rec, data_range=1.0, channel_axis=-1)
    return float(psnr), float(ssim)


def find_inception_weights(explicit: str | None) -> str:
    """The local Inception weights file for rFID, or a `UserError` that says how to provide it."""
    if explicit:
        if not os.path.isfile(explicit):
            raise UserError(f"--inception-weights: file not found: {explicit}")
        return explicit
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_WEIGHTS_FILE)
    if os.path.isfile(cached):
        return cached
    raise UserError(
        f"rFID needs torch-fidelity's Inception weights ({INCEPTION_WEIGHTS_FILE}); none at {cached}. "
        "Pass --inception-weights PATH (nothing is downloaded), or --no-fid to skip rFID."
    )


def _import_fidelity() -> Any:
    """torch-fidelity, or a `UserError` naming the fix.

    A torchvision wheel that does not match the installed torch fails while torch-fidelity imports
    it, with a RuntimeError (`operator torchvision::nms does not exist`) rather than an ImportError.
    """
    try:
        return importlib.import_module("torch_fidelity")
    except (ImportError, RuntimeError) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise UserError(
            f"rFID needs torch-fidelity, which cannot be imported here ({reason}); "
            'install it with pip install -e ".[eval]" and a torchvision build matching your torch, '
            "or pass --no-fid"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    return evaluate_parser()  # defined without torch, so that `dualvitok evaluate --help` is instant


def _save_png(array: np.ndarray, path: str) -> None:
    Image.fromarray(array).save(path)


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    try:
        return collate_images(items)
    except ValueError as error:
        raise ValueError(f"{error}. For validation images of different sizes pass --batch-size 1") from None


def _usage_counts(indices: torch.Tensor, size: int) -> torch.Tensor:
    return torch.bincount(indices.reshape(-1).long().cpu(), minlength=size)


def evaluate(args: argparse.Namespace, ctx: DistContext) -> dict[str, Any] | None:
    cfg = load_config(args.config)
    fid_weights = None
    if not args.no_fid:
        _import_fidelity()
        fid_weights = find_inception_weights(args.inception_weights)
    val_cfg = cfg.data_args.val.to_dict()
    if args.data_path:
        val_cfg["data_path"] = args.data_path
    dataset = build_dataset(val_cfg)
    count = min(len(dataset), args.max_images) if args.max_images else len(dataset)
    out_dir = args.out or os.path.join(cfg.get("sample_dir") or cfg.results_dir, "eval")
    dirs = {name: os.path.join(out_dir, name) for name in ("samples", "gts")}
    for path in dirs.values():
        os.makedirs(path, exist_ok=True)

    dtype = DTYPES[args.model_dtype]
    model = DualViTok.from_pretrained(
        args.vq_ckpt, use_ema=args.use_ema, config=args.config, device=ctx.device
    )
    model = model.to(device=ctx.device, dtype=dtype).eval()
    sizes = (model.semantic_quantizer.codebook_size, model.pixel_quantizer.codebook_size)
    usage = [torch.zeros(size, dtype=torch.long) for size in sizes]
    totals = torch.zeros(3, dtype=torch.float64)  # psnr sum, ssim sum, images

    batch_size = args.batch_size or int(cfg.data_args.get("per_proc_batch_size", 1))
    mine = list(range(ctx.rank, count, ctx.world_size))
    batches = [[(index, 0) for index in mine[i : i + batch_size]] for i in range(0, len(mine), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=_collate, num_workers=args.num_workers)
    with torch.inference_mode():
        for batch in tqdm(loader, disable=not ctx.is_main, desc="evaluate"):
            images = batch["image"].to(ctx.device, dtype=dtype)
            idx_semantic, idx_pixel = model.encode_code(images)
            reconstructions = model.decode_code(idx_semantic, idx_pixel)
            usage[0] += _usage_counts(idx_semantic, sizes[0])
            usage[1] += _usage_counts(idx_pixel, sizes[1])
            for index, ref, rec in zip(
                batch["index"].tolist(), tensor_to_uint8(images), tensor_to_uint8(reconstructions)
            ):
                _save_png(rec, os.path.join(dirs["samples"], f"{index:06d}.png"))
                _save_png(ref, os.path.join(dirs["gts"], f"{index:06d}.png"))
                psnr, ssim = image_metrics(ref, rec)
                totals += torch.tensor([psnr, ssim, 1.0], dtype=torch.float64)
    if ctx.enabled:
        for tensor in (totals, *usage):
            dist.all_reduce(tensor)
    ctx.barrier()
    if not ctx.is_main:
        return None
    results: dict[str, Any] = {
        "num_images": int(totals[2].item()),
        "psnr": totals[0].item() / max(1.0, totals[2].item()),
        "ssim": totals[1].item() / max(1.0, totals[2].item()),
        "codebook_usage": {
            "semantic": int((usage[0] > 0).sum()) / sizes[0],
            "pixel": int((usage[1] > 0).sum()) / sizes[1],
        },
        "checkpoint": args.vq_ckpt,
        "use_ema": args.use_ema,
        "model_dtype": args.model_dtype,
    }
    if fid_weights is not None:
        metrics = _import_fidelity().calculate_metrics(
            input1=dirs["samples"],
            input2=dirs["gts"],
            cuda=ctx.device.type == "cuda",
            isc=True,
            fid=True,
            kid=False,
            prc=False,
            verbose=False,
            feature_extractor_weights_path=fid_weights,
        )
        results["rfid"] = float(metrics["frechet_inception_distance"])
        results["inception_score"] = float(metrics["inception_score_mean"])
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    logger.info("results: %s", json.dumps(results))
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    ctx = init_distributed(args.device)
    try:
        return evaluate(args, ctx)
    finally:
        ctx.close()


if __name__ == "__main__":
    from vision_tokenizer.utils.user_errors import run_cli

    sys.exit(run_cli("python -m vision_tokenizer.evaluate", main))
