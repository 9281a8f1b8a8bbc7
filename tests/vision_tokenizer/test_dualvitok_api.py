"""DualViTok public API: building, checkpoint formats and errors, batches vs lists, decode paths."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.utils.checkpoint import CheckpointError, load_state_dict_file
from vision_tokenizer.utils.config import load_config

from tests.conftest import REPO_ROOT, golden_dir

TINY_CONFIG = golden_dir() / "dualvitok_tiny_config.json"
TINY_WEIGHTS = golden_dir() / "dualvitok_tiny_state_dict.safetensors"


class PickledTrainingArgs:
    """Stands in for the Config object the official trainer pickles next to the weights."""

    def __init__(self) -> None:
        self.lr = 1e-4


@pytest.fixture(scope="module")
def model() -> DualViTok:
    return DualViTok.from_pretrained(TINY_WEIGHTS, config=TINY_CONFIG)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return load_file(str(TINY_WEIGHTS))


def _images(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, h, w, generator=generator) * 2 - 1 for h, w in sizes]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------- construction


def test_from_config_accepts_dict_json_and_python_files(model):
    vq_model = json.loads(TINY_CONFIG.read_text())
    python_config = REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py"
    for source in (vq_model, TINY_CONFIG, python_config, load_config(python_config)):
        built = DualViTok.from_config(source)
        assert {k: v.shape for k, v in built.state_dict().items()} == {
            k: v.shape for k, v in model.state_dict().items()
        }


def test_from_config_rejects_unknown_keys():
    vq_model = json.loads(TINY_CONFIG.read_text())
    bad_section = json.loads(json.dumps(vq_model))
    bad_section["config"]["semantic_decoder"]["num_layers"] = 3
    with pytest.raises(ValueError, match=r"num_layers.*semantic_decoder"):
        DualViTok.from_config(bad_section)
    bad_top = {**vq_model, "pixel_drop": 0.1}
    with pytest.raises(ValueError, match="pixel_drop"):
        DualViTok.from_config(bad_top)
    with pytest.raises(ValueError, match="VectorQuantize"):
        DualViTok.from_config(
            {
                **vq_model,
                "config": {
                    **vq_model["config"],
                    "pixel_quantizer": {"type": "VectorQuantize", "dim": 8, "codebook_size": 8},
                },
            }
        )


# ---------------------------------------------------------------- checkpoints


def test_save_pretrained_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "saved")
    assert {p.name for p in (tmp_path / "saved").iterdir()} == {"config.json", "model.safetensors"}
    loaded = DualViTok.from_pretrained(tmp_path / "saved")
    assert _same_weights(model, loaded)
    assert loaded.config == model.config
    (image,) = _images((64, 64))
    with torch.no_grad():
        for ours, theirs in zip(model.encode_code(image), loaded.encode_code(image)):
            assert torch.equal(ours, theirs)


LAYOUTS = [
    (suffix, wrapper) for suffix in (".bin", ".pt", ".pth") for wrapper in ("raw", "model", "state_dict")
]


@pytest.mark.parametrize(("suffix", "wrapper"), [*LAYOUTS, (".safetensors", "raw")])
def test_official_checkpoint_layouts_load(model, weights, tmp_path, suffix, wrapper):
    path = tmp_path / f"checkpoint{suffix}"
    if suffix == ".safetensors":
        save_file(weights, str(path))
    else:
        torch.save(weights if wrapper == "raw" else {wrapper: weights, "steps": 7}, path)
    assert _same_weights(model, DualViTok.from_pretrained(path, config=TINY_CONFIG))


def test_ema_weights_are_chosen_only_with_use_ema(weights, tmp_path):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}
    path = tmp_path / "train.pt"
    torch.save({"model": weights, "ema": ema, "optimizer": {}, "steps": 3}, path)
    plain = DualViTok.from_pretrained(path, config=TINY_CONFIG)
    averaged = DualViTok.from_pretrained(path, use_ema=True, config=TINY_CONFIG)
    key = "pixel_quant_conv.weight"
    assert torch.equal(plain.state_dict()[key], weights[key])
    assert torch.equal(averaged.state_dict()[key], ema[key])
    torch.save({"model": weights}, tmp_path / "no_ema.pt")
    with pytest.raises(CheckpointError, match="no 'ema'"):
        load_state_dict_file(tmp_path / "no_ema.pt", use_ema=True)


def test_folder_with_official_file_name_loads(model, weights, tmp_path):
    folder = tmp_path / "dualvitok"
    folder.mkdir()
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(TINY_CONFIG.read_text())
    assert _same_weights(model, DualViTok.from_pretrained(folder))
    assert _same_weights(model, DualViTok.from_pretrained(folder / "pytorch_model.bin"))


def test_mismatched_checkpoint_lists_keys_by_name(weights, tmp_path):
    broken = dict(weights)
    broken["pixel_quant_conv.weight"] = torch.zeros(8, 8, 3, 3)
    del broken["semantic_decoder.proj_in.bias"]
    broken["semantic_decoder.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(broken, str(path))
    with pytest.raises(CheckpointError) as error:
        DualViTok.from_pretrained(path, config=TINY_CONFIG)
    message = str(error.value)
    assert "missing keys (1)" in message and "semantic_decoder.proj_in.bias" in message
    assert "unexpected keys (1)" in message and "semantic_decoder.extra.weight" in message
    assert "mis-shaped keys (1)" in message and "pixel_quant_conv.weight: checkpoint (8, 8, 3, 3)" in message


def test_non_strict_load_still_rejects_wrong_shapes_but_tolerates_missing(model, weights, tmp_path):
    partial = {k: v for k, v in weights.items() if not k.startswith("semantic_decoder.")}
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    loaded = DualViTok.from_pretrained(path, strict=False, config=TINY_CONFIG)
    assert torch.equal(loaded.state_dict()["pixel_quant_conv.weight"], weights["pixel_quant_conv.weight"])
    with pytest.raises(CheckpointError, match="missing keys"):
        DualViTok.from_pretrained(path, config=TINY_CONFIG)


def test_wrong_model_checkpoint_is_named(tmp_path):
    mllm = golden_dir() / "mllm_tiny_state_dict.safetensors"
    with pytest.raises(CheckpointError, match="does not belong to DualViTok") as error:
        DualViTok.from_pretrained(mllm, config=TINY_CONFIG)
    assert "model" in str(error.value) and str(mllm) in str(error.value)


def test_unsafe_or_unreadable_files_give_clear_errors(weights, tmp_path):
    pickled = tmp_path / "with_args.pt"
    torch.save({"model": weights, "args": PickledTrainingArgs()}, pickled)
    with pytest.raises(CheckpointError, match="pickles Python objects"):
        DualViTok.from_pretrained(pickled, config=TINY_CONFIG)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.safetensors"):
        DualViTok.from_pretrained(corrupt, config=TINY_CONFIG)
    with pytest.raises(CheckpointError, match="not found"):
        DualViTok.from_pretrained(tmp_path / "missing.bin", config=TINY_CONFIG)
    with pytest.raises(ValueError, match="config"):
        DualViTok.from_pretrained(pickled)


# ---------------------------------------------------------------- batches and lists


def test_shapes_of_every_operation(model):
    (image,) = _images((64, 96))
    with torch.no_grad():
        encoding = model.encode(image)
        q_sem, loss_sem, idx_sem, target = (getattr(encoding.semantic, f) for f in ("quant", "loss", "indices", "target"))
        q_pix, loss_pix, idx_pix = encoding.pixel.quant, encoding.pixel.loss, encoding.pixel.indices
        assert q_sem.shape == (1, 8, 2, 3) and idx_sem.shape == (1, 2, 3) and target.shape == (1, 96, 2, 3)
        assert q_pix.shape == (1, 8, 4, 6) and idx_pix.shape == (1, 4, 6)
        assert loss_sem.ndim == 0 and loss_pix.ndim == 0 and idx_sem.dtype == torch.int64
        assert model.merge_quants(q_sem, q_pix).shape == (1, 16, 4, 6)
        assert model.decode_code(idx_sem, idx_pix).shape == (1, 3, 64, 96)
        assert model.decode_semantic(q_sem).shape == (1, 96, 2, 3)


def test_batch_equals_one_by_one(model):
    images = _images((64, 64), (64, 64), seed=1)
    with torch.no_grad():
        batch_sem, batch_pix = model.encode_code(torch.cat(images))
        singles = [model.encode_code(image) for image in images]
        batch_images = model.decode_code(batch_sem, batch_pix)
        single_images = [model.decode_code(s, p) for s, p in singles]
    assert torch.equal(batch_sem, torch.cat([s for s, _ in singles]))
    assert torch.equal(batch_pix, torch.cat([p for _, p in singles]))
    torch.testing.assert_close(batch_images, torch.cat(single_images), atol=1e-5, rtol=1e-5)


def test_list_of_sizes_equals_each_alone(model):
    images = _images((64, 96), (96, 64), (64, 96), seed=2)
    with torch.no_grad():
        list_sem, list_pix = model.encode_code(images)
        alone = [model.encode_code(image) for image in images]
        decoded = model.decode_code(list_sem, list_pix)
        codes = model.indices_to_codes(list_sem, list_pix)
        semantic = model.decode_semantic(codes.semantic)
    assert isinstance(list_sem, list) and len(list_sem) == 3
    for (sem, pix), (alone_sem, alone_pix) in zip(zip(list_sem, list_pix), alone):
        assert torch.equal(sem, alone_sem) and torch.equal(pix, alone_pix)
    assert [tuple(d.shape) for d in decoded] == [(1, 3, 64, 96), (1, 3, 96, 64), (1, 3, 64, 96)]
    assert [tuple(s.shape) for s in semantic] == [(1, 96, 2, 3), (1, 96, 3, 2), (1, 96, 2, 3)]


def test_list_losses_average_over_all_positions(model):
    images = _images((64, 96), (96, 128), seed=3)
    with torch.no_grad():
        listed = model.encode(images).semantic
        alone = [model.encode(image).semantic for image in images]
    list_loss, idx = listed.loss, listed.indices
    counts = [i.numel() for i in idx]
    expected = sum(out.loss * n for out, n in zip(alone, counts)) / sum(counts)
    torch.testing.assert_close(list_loss, expected)


def test_forward_is_encode_then_both_decoders(model):
    (image,) = _images((64, 64), seed=4)
    with torch.no_grad():
        out = model(image)
        encoding = model.encode(image)
        q_sem, q_pix = encoding.semantic.quant, encoding.pixel.quant
        torch.testing.assert_close(out.semantic_decoded, model.decode_semantic(q_sem))
        torch.testing.assert_close(out.reconstruction, model.decode(q_sem, q_pix))
    torch.testing.assert_close(out.semantic_target, encoding.semantic.target)
    assert out.semantic_loss == encoding.semantic.loss and out.pixel_loss == encoding.pixel.loss


def test_pixel_code_dropout_only_in_training(weights):
    config = json.loads(TINY_CONFIG.read_text())
    config["config"].update(pixel_drop_rate=1.0, pixel_drop_batch_rate=1.0, pixel_noise_type="zero")
    noisy = DualViTok.from_config(config)
    q_sem, q_pix = torch.randn(2, 8, 2, 2), torch.randn(2, 8, 4, 4)
    noisy.eval()
    assert torch.equal(noisy.merge_quants(q_sem, q_pix)[:, 8:], q_pix)
    noisy.train()
    assert torch.equal(noisy.merge_quants(q_sem, q_pix)[:, 8:], torch.zeros_like(q_pix))
    noisy.pixel_noise_type = "random"
    assert torch.equal(noisy.merge_quants(q_sem, q_pix)[:, 8:], q_pix.roll(1, dims=0))


def test_semantic_merge_is_fp32_bicubic_without_antialias(model):
    q_sem, q_pix = torch.randn(1, 8, 3, 3), torch.randn(1, 8, 5, 5)
    merged = model.merge_quants(q_sem, q_pix)
    expected = torch.nn.functional.interpolate(q_sem, size=(5, 5), mode="bicubic", align_corners=False)
    torch.testing.assert_close(merged[:, :8], expected)
    assert torch.equal(merged[:, 8:], q_pix)


def test_hub_folder_loads_without_config_argument(model, weights, tmp_path):
    """The `dualvitok` Hub folder: pytorch_model.bin + an HF-style config.json (remote-code keys)."""
    tiny = json.loads(TINY_CONFIG.read_text())
    folder = tmp_path / "dualvitok"
    folder.mkdir()
    torch.save(weights, folder / "pytorch_model.bin")
    hub = {"architectures": ["DualViTok"], "auto_map": {"AutoModel": "modeling.DualViTok"}, "model_type": "dualvitok",
           **tiny["config"], "semantic_vit_config": tiny["_semantic_encoder_vit_config"]}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(hub))
    assert _same_weights(model, DualViTok.from_pretrained(folder))


def test_outputs_are_typed_and_codes_unpack(model):
    (image,) = _images((64, 64), seed=5)
    with torch.no_grad():
        codes = model.encode_code(image)
        semantic, pixel = codes
        encoding = model.encode(image)
    assert semantic is codes.semantic and pixel is codes.pixel
    assert torch.equal(encoding.semantic.indices, semantic) and torch.equal(encoding.pixel.indices, pixel)
    with pytest.raises(ValueError, match="all be tensors or all be lists"):
        model.decode_code([semantic], pixel)
