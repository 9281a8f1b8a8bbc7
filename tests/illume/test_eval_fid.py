"""FID math against a hand-computed value and scipy's matrix square root; folder FID invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from illume.eval.suites.fid import (
    INCEPTION_WEIGHTS_URL,
    extract_features,
    feature_extractor,
    fid_of_features,
    frechet_distance,
    image_files,
    register_feature_extractor,
)
from PIL import Image
from vision_tokenizer.utils.user_errors import UserError


def _scipy_fid(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root (what pytorch-fid does)."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_one_dimensional_value_by_hand():
    # N(1, 4) vs N(3, 9): (1-3)^2 + 4 + 9 - 2*sqrt(36) = 4 + 13 - 12 = 5
    assert frechet_distance(
        np.array([1.0]), np.array([[4.0]]), np.array([3.0]), np.array([[9.0]])
    ) == pytest.approx(5.0)


def test_matches_scipy_sqrtm_on_random_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(50, 6)) @ rng.normal(size=(6, 6)) + 2
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_scipy_fid(mu1, s1, mu2, s2), rel=1e-8)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def _mean_colour(weights, device):
    """A stand-in extractor: per-channel mean and std of the pixels (no weights)."""

    def extract(images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)

    return extract


def _folder(path, colours):
    path.mkdir(parents=True)
    rng = np.random.default_rng(len(colours))
    for i, colour in enumerate(colours):
        noise = rng.integers(0, 40, size=(12, 12, 3))
        Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(path / f"{i}.png")
    return path


def test_folder_fid_is_zero_for_the_same_images_and_positive_otherwise(tmp_path):
    register_feature_extractor("test-colour", _mean_colour)
    extractor = feature_extractor("test-colour")
    reds = _folder(tmp_path / "red", [(200, 10, 10), (180, 30, 20), (210, 0, 40)])
    blues = _folder(tmp_path / "blue", [(10, 10, 200), (30, 20, 180), (0, 40, 210)])
    red = extract_features(image_files(reds), extractor, batch_size=2)
    assert red.shape == (3, 6)
    assert fid_of_features(red, red).fid == pytest.approx(0.0, abs=1e-9)
    result = fid_of_features(red, extract_features(image_files(blues), extractor))
    assert result.fid > 0.5 and (result.generated, result.reference) == (3, 3)
    assert fid_of_features(red[:1], red).fid is None  # one image has no covariance


def test_inception_needs_local_weights(tmp_path):
    with pytest.raises(UserError, match="weights-inception-2015-12-05") as info:
        feature_extractor("inception", str(tmp_path / "missing.pth"))
    assert INCEPTION_WEIGHTS_URL in str(info.value)
    with pytest.raises(UserError, match="unknown feature extractor"):
        feature_extractor("no-such-extractor")


def test_fid_command_writes_json(tmp_path, capsys):
    from illume.cli import main

    register_feature_extractor("test-colour", _mean_colour)
    reds = _folder(tmp_path / "red", [(200, 10, 10), (180, 30, 20), (210, 0, 40)])
    out = tmp_path / "fid.json"
    assert main(["eval", "fid", str(reds), str(reds), "--features", "test-colour", "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["fid"] == pytest.approx(0.0, abs=1e-9) and record["generated"] == record["reference"] == 3
    assert json.loads(capsys.readouterr().out) == record
    assert main(["eval", "fid", str(reds), str(tmp_path / "missing"), "--features", "test-colour"]) == 2


def test_inception_wraps_torch_fidelity_with_the_local_weights(tmp_path, monkeypatch):
    """torch-fidelity cannot be imported beside the CPU torch here: check the wiring against its API."""
    import sys
    import types

    built = {}

    class FeatureExtractorInceptionV3(torch.nn.Module):  # torch-fidelity's signature and output tuple
        def __init__(self, name, features_list, feature_extractor_weights_path=None):
            super().__init__()
            built.update(name=name, features=features_list, weights=feature_extractor_weights_path)

        def forward(self, images):
            assert images.dtype == torch.uint8 and images.shape[1] == 3
            return (images.float().mean((2, 3)).repeat(1, 683)[:, :2048],)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FeatureExtractorInceptionV3
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    extract = feature_extractor("inception", str(weights))
    assert built == {"name": "inception-v3-compat", "features": ["2048"], "weights": str(weights)}
    assert extract(torch.zeros(2, 3, 40, 50, dtype=torch.uint8)).shape == (2, 2048)
