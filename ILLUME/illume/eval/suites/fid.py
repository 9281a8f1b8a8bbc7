"""FID between two sets of images: the Fréchet distance of Gaussian fits to their features.

    FID = |mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)

`tr((S1 S2)^½)` is the sum of the square roots of the eigenvalues of `S1^½ S2 S1^½`, which is
symmetric positive semi-definite, so it is computed with symmetric eigendecompositions in float64
(no complex matrix square root, no 1e-6 diagonal fudge).

Features come from a registered extractor. `inception` is the standard FID Inception-v3 of
torch-fidelity (pool3, 2048-d), with its weights read only from a local file; other extractors
(e.g. a tiny stand-in for tests) are added with `register_feature_extractor`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from vision_tokenizer.utils.user_errors import UserError

__all__ = [
    "INCEPTION_WEIGHTS_URL",
    "FeatureExtractor",
    "GaussianFit",
    "FIDResult",
    "frechet_distance",
    "fit_gaussian",
    "register_feature_extractor",
    "feature_extractor",
    "image_files",
    "extract_features",
    "fid_of_features",
    "folder_fid",
    "run",
]

INCEPTION_WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# uint8 images [N, 3, H, W] (one size per call) -> features [N, D]
FeatureExtractor = Callable[[torch.Tensor], torch.Tensor]
_EXTRACTORS: dict[str, Callable[[str | None, torch.device], FeatureExtractor]] = {}


@dataclass(frozen=True)
class GaussianFit:
    mean: np.ndarray
    cov: np.ndarray
    count: int


@dataclass(frozen=True)
class FIDResult:
    fid: float | None
    generated: int
    reference: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray) -> float:
    mean1, mean2 = np.atleast_1d(np.asarray(mean1, np.float64)), np.atleast_1d(np.asarray(mean2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    if mean1.shape != mean2.shape or cov1.shape != cov2.shape or cov1.shape != (mean1.size, mean1.size):
        raise ValueError(
            f"shapes do not match: means {mean1.shape} {mean2.shape}, covariances {cov1.shape} {cov2.shape}"
        )
    root = _psd_sqrt(cov1)
    middle = root @ cov2 @ root
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mean1 - mean2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * cross)


def fit_gaussian(features: np.ndarray) -> GaussianFit:
    """Mean and unbiased covariance (rows are samples), as every FID implementation uses."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows to fit a covariance, got shape {features.shape}")
    return GaussianFit(features.mean(0), np.cov(features, rowvar=False), features.shape[0])


# ---------------------------------------------------------------------------------------------
# feature extractors
def register_feature_extractor(
    name: str, factory: Callable[[str | None, torch.device], FeatureExtractor]
) -> None:
    """`factory(weights_path, device)` builds the extractor when a run asks for `name`."""
    _EXTRACTORS[name] = factory


def _inception(weights: str | None, device: torch.device) -> FeatureExtractor:
    if weights is None or not Path(weights).is_file():
        raise UserError(
            f"FID Inception weights {'not given' if weights is None else f'{weights}: no such file'}: download "
            f"{INCEPTION_WEIGHTS_URL} and pass it with --inception-weights (no download happens at run time)"
        )
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except (ImportError, RuntimeError) as err:  # a torchvision that does not match torch raises RuntimeError
        raise UserError(
            "the inception feature extractor needs torch-fidelity and a torchvision matching your torch: "
            f"pip install 'illume-plus[eval]' ({' '.join(str(err).split())})"
        ) from None
    model = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=os.fspath(weights)
    ).to(device).eval()  # fmt: skip

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        (features,) = model(images.to(device))
        return features

    return extract


register_feature_extractor("inception", _inception)


def feature_extractor(
    name: str, weights: str | None = None, device: str | torch.device = "cpu"
) -> FeatureExtractor:
    if name not in _EXTRACTORS:
        raise UserError(
            f"--features {name!r}: unknown feature extractor; choose one of {sorted(_EXTRACTORS)}"
        )
    return _EXTRACTORS[name](weights, torch.device(device))


# ---------------------------------------------------------------------------------------------
# folders
def image_files(folder: Path) -> list[Path]:
    """Every image under `folder` (recursively, hidden files left out), sorted."""
    if not folder.is_dir():
        raise UserError(f"{folder}: no such image folder")
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )  # fmt: skip


def extract_features(paths: Iterable[Path], extractor: FeatureExtractor, batch_size: int = 32) -> np.ndarray:
    """Features of the images, batched among images of one size (extractors resize themselves)."""
    from tqdm.auto import tqdm
    from vision_tokenizer.data.image_io import load_image

    paths = list(paths)
    out: list[np.ndarray | None] = [None] * len(paths)
    pending: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}

    def flush(size: tuple[int, int]) -> None:
        members = pending.pop(size)
        batch = torch.from_numpy(np.stack([array for _, array in members])).permute(0, 3, 1, 2)
        features = extractor(batch).detach().double().cpu().numpy()
        for (index, _), row in zip(members, features):
            out[index] = row.reshape(-1)

    for index, path in enumerate(tqdm(paths, desc="features", unit="img")):
        image = load_image(path, min_side=1)
        pending.setdefault(image.size, []).append((index, np.asarray(image, dtype=np.uint8)))
        if len(pending[image.size]) == batch_size:
            flush(image.size)
    for size in list(pending):
        flush(size)
    return np.stack(out) if out else np.zeros((0, 0))


def fid_of_features(generated: np.ndarray, reference: np.ndarray) -> FIDResult:
    if len(generated) < 2 or len(reference) < 2:
        return FIDResult(None, len(generated), len(reference), "FID needs at least 2 images on each side")
    a, b = fit_gaussian(generated), fit_gaussian(reference)
    return FIDResult(frechet_distance(a.mean, a.cov, b.mean, b.cov), len(generated), len(reference))


def folder_fid(
    generated: Sequence[Path], reference: Sequence[Path], extractor: FeatureExtractor
) -> FIDResult:
    return fid_of_features(extract_features(generated, extractor), extract_features(reference, extractor))


def run(args: Any) -> int:
    """`illume eval fid GENERATED REFERENCE`: one FID between two folders, printed and written as JSON."""
    import json

    extractor = feature_extractor(args.features, args.inception_weights, args.device or "cpu")
    result = folder_fid(image_files(args.generated), image_files(args.reference), extractor)
    record = {
        "features": args.features,
        "generated_dir": str(args.generated),
        "reference_dir": str(args.reference),
    }
    record.update(result.to_dict())
    text = json.dumps(record, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0
