"""Run outputs for humans and tools: `log.txt`, `metrics.jsonl`, TensorBoard, image grids.

TensorBoard is optional: without the `tensorboard` package the scalars still go to
`log.txt` and `metrics.jsonl`, and one warning says so.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch
from PIL import Image

from vision_tokenizer.data.image_io import tensor_to_uint8
from vision_tokenizer.runtime.checkpoints import log_offsets, rewind_logs

__all__ = ["RunLogger", "reconstruction_grid", "setup_file_logging"]

logger = logging.getLogger(__name__)


def setup_file_logging(log_file: str | None) -> None:
    """Log INFO to stderr on every rank's caller, and to `log_file` (rank 0 passes a path)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(
        level=logging.INFO,
        format="[%(asctime)s] %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def reconstruction_grid(
    inputs: torch.Tensor, reconstructions: torch.Tensor, max_images: int = 8
) -> Image.Image:
    """Originals in the top row, reconstructions below (at most `max_images` columns)."""
    top = tensor_to_uint8(inputs[:max_images])
    bottom = tensor_to_uint8(reconstructions[:max_images])
    return Image.fromarray(
        np.concatenate([np.concatenate(list(top), axis=1), np.concatenate(list(bottom), axis=1)], 0)
    )


class RunLogger:
    """Rank-0 sink for scalars and images; other ranks get a disabled instance."""

    def __init__(
        self, run_dir: str, enabled: bool, use_tensorboard: bool = True, resume_step: int = 0
    ) -> None:
        self.enabled = enabled
        self.run_dir = run_dir
        self.writer = None
        if not enabled:
            return
        os.makedirs(run_dir, exist_ok=True)
        self.metrics_path = os.path.join(run_dir, "metrics.jsonl")
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed: scalars go to log.txt and metrics.jsonl only")
            else:
                # purge_step drops events of a killed run logged after the checkpoint resumed from.
                self.writer = SummaryWriter(os.path.join(run_dir, "logs"), purge_step=resume_step or None)

    def _files(self) -> list[str]:
        """The append-only text outputs of the run: metrics and the file log (`setup_file_logging`)."""
        logs = [h.baseFilename for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
        run_dir = os.path.abspath(self.run_dir)
        return [self.metrics_path] + [p for p in logs if os.path.dirname(os.path.abspath(p)) == run_dir]

    def offsets(self) -> dict[str, int]:
        """Byte sizes of the run's text outputs now (stored in checkpoints, see `rewind`)."""
        return log_offsets(self._files()) if self.enabled else {}

    def rewind(self, offsets: dict[str, int]) -> bool:
        """Cut the text outputs back to `offsets` (taken when the resumed checkpoint was saved);
        True if anything was cut."""
        return bool(self.enabled and rewind_logs(self.run_dir, offsets))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        logger.info("step %d %s", step, " ".join(f"{k}={v:.6g}" for k, v in sorted(values.items())))
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def image_grid(self, step: int, grid: Image.Image, directory: str) -> str | None:
        if not self.enabled:
            return None
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"train_{step:07d}.png")
        grid.save(path)
        if self.writer is not None:
            self.writer.add_image("train/reconstructed_imgs", np.asarray(grid), step, dataformats="HWC")
        return path

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
