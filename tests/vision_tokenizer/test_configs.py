"""The DualViTok config files: official keys and values, inheritance, command-line overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vision_tokenizer.utils.config import load_config

from ..conftest import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs"
ANYRES = CONFIG_DIR / "example" / "dualvitok" / "dualvitok_anyres_max512.py"
FIX256 = CONFIG_DIR / "example" / "dualvitok" / "dualvitok_fix256.py"
TINY = CONFIG_DIR / "tiny" / "dualvitok_tiny.py"

# SPEC-tokenizer §A8 "Config file keys": the flat keys every official tokenizer config carries.
FLAT_KEYS = {
    "no_local_save", "ema", "finetune_decoder", "finetune", "vq_ckpt", "aug_fade_steps", "compile",
    "results_dir", "sample_dir", "epochs", "lr", "weight_decay", "beta1", "beta2", "max_grad_norm",
    "global_seed", "num_workers", "log_every", "ckpt_every", "gradient_accumulation_steps",
    "mixed_precision", "use_local_data", "training_with_anyres", "use_group_image_resolution",
}
TOP_KEYS = FLAT_KEYS | {"vq_model", "vq_loss", "data_args"}
MODEL_KEYS = {
    "semantic_encoder", "semantic_quantizer", "semantic_decoder", "pixel_encoder", "pixel_quantizer",
    "pixel_decoder", "pixel_drop_rate", "pixel_drop_batch_rate", "pixel_noise_type",
}
LOSS = {
    "type": "DualViTokLoss", "disc_start": 20000, "disc_loss": "hinge", "disc_dim": 64,
    "disc_type": "patchgan", "image_size": 512, "disc_num_layers": 3, "disc_in_channels": 3,
    "disc_weight": 0.5, "disc_adaptive_weight": False, "gen_adv_loss": "hinge",
    "reconstruction_loss": "l2", "reconstruction_weight": 1.0, "codebook_weight": 1.0,
    "perceptual_weight": 1.0, "semantic_reconstruction": "cos",
}


def _flatten(node, prefix: str = "") -> dict[str, object]:
    """Nested dicts → {'a.b.c': leaf}; lists are leaves (compared whole)."""
    if not isinstance(node, dict):
        return {prefix: node}
    out: dict[str, object] = {}
    for key, value in node.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


@pytest.mark.parametrize("path", [ANYRES, FIX256, TINY], ids=lambda p: p.name)
def test_config_has_the_official_key_set(path: Path) -> None:
    cfg = load_config(path)
    assert set(cfg.keys()) == TOP_KEYS
    assert cfg.vq_model.type == "DualViTok"
    assert set(cfg.vq_model.config.keys()) == MODEL_KEYS
    assert {"global_batch_size", "image_size", "image_size_eval", "train", "val", "inference",
            "per_proc_batch_size", "infer_interpolate"} == set(cfg.data_args.keys())
    assert cfg.sample_dir == f"{cfg.results_dir}sample_dir/"


def test_anyres_config_values() -> None:
    cfg = load_config(ANYRES)
    model = cfg.vq_model.config
    assert model.semantic_encoder.to_dict() == {
        "semantic_encoder": "Emova-ollm/qwen2vit600m", "num_blocks": 4, "proj_layer": "linear",
        "z_channels": 32, "embed_dim": 1280, "attn_implementation": "sdpa", "target_mlp": "norm",
    }
    assert model.semantic_decoder.to_dict() == {
        "z_channels": 32, "proj_layer": "linear_norm", "embed_dim": 1280, "output_channels": 3584,
        "num_blocks": 4, "attn_implementation": "sdpa",
    }
    for name, size in (("semantic_quantizer", 32768), ("pixel_quantizer", 98304)):
        assert model[name].to_dict() == {
            "type": "SimVQ", "dim": 32, "codebook_size": size, "channel_first": True, "rotation_trick": False,
        }
    common = {"attn_resolutions": [4], "ch_mult": [1, 1, 2, 2, 4], "codebook_size": 98304, "double_z": False,
              "dropout": 0.0, "in_channels": 3, "num_res_blocks": 2, "out_channels": 3,
              "use_dc_up_down_blocks": True}
    assert model.pixel_encoder.to_dict() == {**common, "ch": 128, "embed_dim": 32, "z_channels": 32}
    assert model.pixel_decoder.to_dict() == {**common, "ch": 384, "embed_dim": 64, "z_channels": 64}
    assert (model.pixel_drop_rate, model.pixel_drop_batch_rate, model.pixel_noise_type) == (None, 0.1, "random")
    assert cfg.vq_loss.to_dict() == LOSS

    data = cfg.data_args
    assert (data.global_batch_size, data.per_proc_batch_size, data.image_size, data.image_size_eval) == (256, 2, 512, 256)
    assert data.train.augment.to_dict() == {
        "type": "dualvitok_anyres_resolution_train", "min_pixels": 32 * 32, "max_pixels": 512 * 512}
    assert [d.dataset for d in data.train.dataset] == ["folder"]
    assert data.train.dataset[0].json_file.endswith(".json")
    assert data.inference.to_dict() == {
        "resolution": 256, "dataset": "codebook_inference", "data_path": "",
        "augment": {"type": "dualvitok_anyres_inference"}, "batch_size_for_inference": 1}
    assert (cfg.epochs, cfg.lr, cfg.beta1, cfg.beta2, cfg.weight_decay) == (21, 1e-4, 0.9, 0.95, 5e-2)
    assert (cfg.global_seed, cfg.ckpt_every, cfg.log_every, cfg.mixed_precision) == (3, 2000, 100, "bf16")
    assert cfg.training_with_anyres and cfg.use_group_image_resolution and cfg.use_local_data
    assert cfg.vq_ckpt is None and not cfg.ema and not cfg.compile


def test_fix256_differs_from_anyres_only_where_the_spec_says() -> None:
    anyres, fix = _flatten(load_config(ANYRES).to_dict()), _flatten(load_config(FIX256).to_dict())
    assert anyres.keys() - fix.keys() == {"data_args.train.augment.min_pixels", "data_args.train.augment.max_pixels"}
    assert fix.keys() <= anyres.keys()
    changed = {key for key in fix if fix[key] != anyres[key]}
    assert changed == {
        "vq_model.config.pixel_drop_rate", "data_args.per_proc_batch_size", "data_args.image_size",
        "data_args.train.resolution", "data_args.train.augment.type", "data_args.train.dataset",
        "results_dir", "sample_dir", "global_seed", "ckpt_every", "training_with_anyres",
        "use_group_image_resolution",
    }
    assert fix["vq_model.config.pixel_drop_rate"] == 0.1
    assert fix["data_args.train.augment.type"] == "dualvitok_fix_resolution_train"
    assert fix["data_args.train.dataset"][0]["dataset"] == "imagenet"
    assert (fix["global_seed"], fix["ckpt_every"], fix["data_args.per_proc_batch_size"]) == (1, 5000, 8)


def test_tiny_config_is_the_golden_tiny_architecture(golden: Path) -> None:
    reference = json.loads((golden / "dualvitok_tiny_config.json").read_text())
    expected = reference["config"]
    expected["semantic_encoder"]["semantic_encoder"] = reference["_semantic_encoder_vit_config"]
    cfg = load_config(TINY)
    assert cfg.vq_model.type == reference["type"]
    assert cfg.vq_model.config.to_dict() == expected


def test_tiny_config_data_points_at_the_bundled_photos() -> None:
    cfg = load_config(TINY)
    folder = Path(cfg.data_args.train.dataset[0].data_path)
    assert folder.resolve() == (REPO_ROOT / "assets" / "examples").resolve()
    assert any(folder.glob("*.jpg"))


def test_base_inheritance_merges_dicts_and_replaces_leaves(tmp_path: Path) -> None:
    child = tmp_path / "child.py"
    child.write_text(
        f"_base_ = [{str(ANYRES)!r}]\n"
        "vq_model = dict(config=dict(pixel_encoder=dict(ch=64)))\n"
        "data_args = dict(train=dict(dataset=[dict(dataset='imagenet', data_path='/data')]))\n"
        "epochs = 3\n"
    )
    cfg = load_config(child)
    base = load_config(ANYRES)
    assert cfg.vq_model.config.pixel_encoder.ch == 64
    assert cfg.vq_model.config.pixel_encoder.ch_mult == [1, 1, 2, 2, 4]  # sibling kept
    assert cfg.vq_model.config.semantic_encoder == base.vq_model.config.semantic_encoder
    assert [d.to_dict() for d in cfg.data_args.train.dataset] == [{"dataset": "imagenet", "data_path": "/data"}]
    assert cfg.epochs == 3 and cfg.lr == base.lr


def test_overrides_set_nested_values() -> None:
    cfg = load_config(ANYRES, ["--vq_model.config.pixel_drop_rate=0.2", "--data_args.train.resolution", "384",
                               "--vq_loss.disc_adaptive_weight=true", "--data_args.val.data_path=/x/val"])
    assert cfg.vq_model.config.pixel_drop_rate == 0.2
    assert cfg.data_args.train.resolution == 384
    assert cfg.vq_loss.disc_adaptive_weight is True
    assert cfg.data_args.val.data_path == "/x/val"
    assert cfg.vq_model.config.pixel_drop_batch_rate == 0.1  # untouched sibling


def test_override_with_a_typo_in_the_key_path_raises() -> None:
    with pytest.raises(KeyError, match="vq_model.confg"):
        load_config(ANYRES, ["--vq_model.confg.pixel_drop_rate=0.2"])


def test_override_with_a_typo_in_the_last_key_raises_with_a_suggestion() -> None:
    with pytest.raises(KeyError, match="did you mean pixel_drop_rate"):
        load_config(ANYRES, ["--vq_model.config.pixel_drop_ratee=0.2"])


def test_override_value_is_never_executed() -> None:
    cfg = load_config(ANYRES, ["--data_args.val.data_path=__import__('os').getcwd()"])
    assert cfg.data_args.val.data_path == "__import__('os').getcwd()"


# ---------------------------------------------------------------- DualViTokConfig and the shipped configs


@pytest.mark.parametrize("path", [ANYRES, FIX256], ids=lambda p: p.stem)
def test_shipped_official_configs_equal_the_config_files(path: Path) -> None:
    """The package's dict form is the same architecture as the checkout's official .py files."""
    from vision_tokenizer.models.configuration_dualvitok import DualViTokConfig

    shipped = DualViTokConfig.from_official(path.stem).to_vq_model()
    from_file = load_config(path).vq_model.to_dict()
    for key in ("semantic_detail_merge_type", "infer_interpolate"):  # not in the official files
        assert shipped["config"].pop(key) == DualViTokConfig().to_dict()[key]
    assert shipped == json.loads(json.dumps(from_file))


def test_defaults_are_the_released_architecture() -> None:
    from vision_tokenizer.models.configuration_dualvitok import DualViTokConfig

    config = DualViTokConfig()
    assert config.to_vq_model() == DualViTokConfig.from_official("dualvitok_anyres_max512").to_vq_model()
    assert (config.semantic_quantizer["codebook_size"], config.pixel_quantizer["codebook_size"]) == (32768, 98304)
    round_trip = DualViTokConfig.from_vq_model(json.loads(json.dumps(config.to_vq_model())))
    assert round_trip.to_vq_model() == config.to_vq_model()
    assert config.pixel_decoder_config.z_channels == 64 and config.pixel_encoder_config.ch == 128
    # The parts are checked when the config is made, before any model is built.
    with pytest.raises(ValueError, match=r"num_layers.*semantic_decoder"):
        DualViTokConfig(semantic_decoder={"num_layers": 3})
    with pytest.raises(ValueError, match=r"pixel_encoder.*chanels"):
        DualViTokConfig(pixel_encoder={"chanels": 3})


def test_official_name_resolves_without_the_checkout(monkeypatch, tmp_path: Path) -> None:
    """The released `vq_config` string needs no file: the resolver never looks at `configs/`."""
    from vision_tokenizer.models import configuration_dualvitok as module

    monkeypatch.chdir(tmp_path)
    opened: list[str] = []
    real_open = Path.open

    def tracking_open(self, *args, **kwargs):
        opened.append(str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", tracking_open)
    config = module.read_dualvitok_config("configs/example/dualvitok/dualvitok_anyres_max512.py")
    assert opened == [] and config.pixel_decoder["ch"] == 384
    assert module.read_dualvitok_config("dualvitok_fix256").pixel_drop_rate == 0.1
    # The definitions live in the installed package itself, not in data files of the checkout.
    assert Path(module.__file__).parent.parent.name == "vision_tokenizer"
    assert module.official_config_name("/abs/configs/example/dualvitok/dualvitok_fix256.py") is None
    assert module.official_config_name("other/dir/dualvitok_fix256.py") is None


def test_python_configs_run_only_when_allowed(tmp_path: Path) -> None:
    from vision_tokenizer.models.configuration_dualvitok import read_dualvitok_config

    marker = tmp_path / "ran"
    script = tmp_path / "evil.py"
    script.write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('x')\nvq_model = dict(config=dict())\n")
    with pytest.raises(ValueError, match="refusing to execute the Python config"):
        read_dualvitok_config("evil.py", search_dirs=[tmp_path])
    assert not marker.exists()
    with pytest.raises(FileNotFoundError, match="nothing.json.*looked at"):
        read_dualvitok_config("nothing.json", search_dirs=[tmp_path])


def test_hub_style_config_json_is_read(tmp_path: Path, golden: Path) -> None:
    """An HF-style config.json (model_type, architectures, auto_map, parts at the top level)."""
    from vision_tokenizer.models.configuration_dualvitok import read_dualvitok_config

    tiny = json.loads((golden / "dualvitok_tiny_config.json").read_text())
    hub = {"architectures": ["DualViTok"], "auto_map": {"AutoModel": "modeling_dualvitok.DualViTok"},
           "model_type": "dualvitok", **tiny["config"], "semantic_vit_config": tiny["_semantic_encoder_vit_config"]}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(hub))
    config = read_dualvitok_config(tmp_path)
    assert config.to_vq_model()["config"]["pixel_decoder"] == tiny["config"]["pixel_decoder"]
    assert config.semantic_vit_config == tiny["_semantic_encoder_vit_config"]
    with pytest.raises(ValueError, match="not a DualViTok"):
        read_dualvitok_config({"model_type": "llama"})


def test_meta_data_config_paths_relative_to_the_official_working_directory(tmp_path: Path, monkeypatch) -> None:
    """The official examples json names folders relative to `ILLUME/`; it loads unchanged."""
    from vision_tokenizer.data.meta_config import load_meta_data_config

    repo = tmp_path / "repo"
    data = repo / "configs" / "data_configs" / "train_data_examples"
    (data / "ex" / "images").mkdir(parents=True)
    (repo / "ILLUME").mkdir()
    official = {"ex": {"root": "../configs/data_configs/train_data_examples/ex",
                       "image_dir": "../configs/data_configs/train_data_examples/ex/images",
                       "annotation_dir": "../configs/data_configs/train_data_examples/ex/jsonl",
                       "tokenizer_inference": True}}  # fmt: skip
    (data / "meta.json").write_text(json.dumps(official))
    monkeypatch.chdir(tmp_path)
    (meta,) = load_meta_data_config(data / "meta.json").values()
    assert meta.image_dir == (data / "ex" / "images").resolve()
    # json-relative paths (ours) still win; then the working directory
    (data / "ours.json").write_text(json.dumps({"ex": {**official["ex"], "image_dir": "ex/images"}}))
    assert load_meta_data_config(data / "ours.json")["ex"].image_dir == (data / "ex" / "images").resolve()
    (tmp_path / "cwd_images").mkdir()
    (data / "cwd.json").write_text(json.dumps({"ex": {**official["ex"], "image_dir": "cwd_images"}}))
    assert load_meta_data_config(data / "cwd.json")["ex"].image_dir == (tmp_path / "cwd_images").resolve()
    (data / "bad.json").write_text(json.dumps({"ex": {**official["ex"], "image_dir": "nowhere", "annotation_dir": "none"}}))
    with pytest.raises(FileNotFoundError, match=r"dataset 'ex'.*tried .*train_data_examples/none, .*ILLUME/none, .*none"):
        load_meta_data_config(data / "bad.json")
