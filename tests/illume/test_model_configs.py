"""The MLLM config files: official keys/values, and the tiny config describing the golden model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from illume.model import IllumeQwen2Config, IllumeQwen2ForCausalLM
from illume.vocab import ImageGrid, ImageVocabulary
from safetensors.torch import load_file
from transformers import AutoTokenizer
from vision_tokenizer.utils.config import load_config

from tests.conftest import REPO_ROOT, manifests_dir

STAGE3 = [
    "configs/example/illume_plus_3b/illume_plus_qwen2_5_3b_stage3.py",
    "configs/example/illume_plus_7b/illume_plus_qwen2_5_7b_stage3.py",
]


@pytest.mark.parametrize("path", STAGE3)
def test_stage3_recipe(path: str) -> None:
    cfg = load_config(REPO_ROOT / path)
    tower, args = cfg.model_args.mm_vision_tower, cfg.training_args
    assert tower.type == "DualVisionTower" and (tower.min_pixels, tower.max_pixels) == (32 * 32, 768 * 768)
    assert tower.trainable and tower.tune_vit_from_layer == 16 and cfg.model_args.mm_projector.trainable
    assert (REPO_ROOT / tower.vq_config).is_file()
    assert cfg.model_args.unfreeze_vision_embedding and cfg.model_args.unfreeze_text_embedding
    assert cfg.model_args.special_tokens_ids == list(range(151665, 151672))
    assert (args.learning_rate, args.mm_vision_tower_lr, args.mm_projector_lr) == (2e-5, 2e-6, None)
    assert (args.model_max_length, args.seed, args.adam_beta2, args.warmup_ratio) == (4096, 423, 0.95, 0.03)
    # The official AdamW; the fused kernel (same update) is the recipes' throughput choice.
    assert args.bf16 and args.gradient_checkpointing and args.optim in ("adamw_torch", "adamw_torch_fused")
    groups = cfg.data_args.meta_data_info_list
    assert [g.dataset_dtype for g in groups] == [
        "DefaultDataset",
        "Text2ImageDataset",
        "SingleTurnEditDataset",
    ]
    for meta in {m for g in groups for m in g.meta_configs}:
        assert (REPO_ROOT / meta).is_file(), meta


def test_debug_recipe() -> None:
    cfg = load_config(REPO_ROOT / "configs/example/illume_debug/illume_debug.py")
    tower = cfg.model_args.mm_vision_tower
    assert not tower.trainable and tower.min_pixels == tower.max_pixels == 256 * 256
    assert cfg.training_args.fp16 and cfg.training_args.num_train_epochs == 10
    assert cfg.training_args.model_max_length == 2048 and cfg.training_args.deepspeed.endswith("zero3.json")


def test_overrides_reach_nested_keys() -> None:
    cfg = load_config(REPO_ROOT / STAGE3[0], ["--model_args.mm_vision_tower.max_pixels=65536"])
    assert cfg.model_args.mm_vision_tower.max_pixels == 65536


def test_tiny_config_is_the_golden_architecture(golden: Path) -> None:
    cfg = load_config(REPO_ROOT / "configs/tiny/illume_tiny.py")
    tokenizer = AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer")
    vocab = ImageVocabulary.from_tokenizer(tokenizer)
    assert vocab.codebook_sizes == (cfg.semantic_codebook_size, cfg.pixel_codebook_size)
    config = IllumeQwen2Config(
        **cfg.llm_config,
        mm_vision_tower=cfg.model_args.mm_vision_tower.to_dict(),
        mm_projector=cfg.model_args.mm_projector.to_dict(),
        special_tokens_ids=vocab.special_tokens_ids,
    )
    # The training config names a Python DualViTok config: the caller reads it, not the constructor.
    config.resolve_dualvitok(explicit=REPO_ROOT / cfg.model_args.mm_vision_tower.vq_config)
    model = IllumeQwen2ForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(
        load_file(golden / "mllm_tiny_state_dict.safetensors"), strict=False
    )
    assert (missing, unexpected) == (["lm_head.weight"], [])
    ids = torch.tensor([tokenizer.encode("<|im_start|>user\n") + [-200] + tokenizer.encode("\nHi")])
    with torch.no_grad():
        logits = model(input_ids=ids, images=[torch.zeros(1, 3, 64, 64)]).logits
    assert logits.shape == (
        1,
        ids.shape[1] - 1 + ImageGrid.for_resolution(64, 64).num_tokens,
        config.vocab_size,
    )


# transformers 5 writes these beside the released spellings (which it also writes, for 4.44 readers).
TRANSFORMERS5_KEYS = {"dtype", "layer_types", "pad_token_id", "rope_parameters"}


def _types(node: dict) -> dict:
    """Key → value type, recursively for dicts (None stays None's type: the released file has nulls)."""
    return {k: _types(v) if isinstance(v, dict) else type(v).__name__ for k, v in node.items()}


def test_trained_config_json_has_the_released_keys_and_types(golden: Path, tmp_path: Path) -> None:
    """What our training writes loads where the released config.json does (SPEC-mllm C1)."""
    import json

    from illume.train.model_builder import build_model_and_tokenizer

    from tests.illume.tiny_models import write_tiny_origin_model

    base = write_tiny_origin_model(golden, tmp_path / "stage2")
    tower = {"type": "DualVisionTower", "vq_config": str(golden / "dualvitok_tiny_config.json"), "vq_ckpt": None,
             "use_ema": False, "trainable": True, "tune_vit_from_layer": 1, "min_pixels": 1024, "max_pixels": 589824}  # fmt: skip
    mlp = {"type": "MLPProjector", "mlp_depth": 2}
    model_args = {
        "language_model": {"type": "IllumeQwen2ForCausalLM", "pretrained_model_name_or_path": str(base)},
        "mm_vision_tower": tower,
        "mm_projector": {"type": "MixedProjector", "projector_cfg1": mlp, "projector_cfg2": mlp, "trainable": True},
    }
    built = build_model_and_tokenizer(model_args, 4096)
    built.model.save_pretrained(tmp_path / "out")
    ours = json.loads((tmp_path / "out" / "config.json").read_text())
    released = json.loads((manifests_dir() / "illume_plus_qwen2_5_3b_config.json").read_text())
    released.pop("_name_or_path")  # a note of the machine it was trained on
    assert set(ours) - set(released) <= TRANSFORMERS5_KEYS and set(released) <= set(ours)
    theirs = _types(released)
    assert {k: v for k, v in _types(ours).items() if k in theirs} == theirs
    # and it loads back, with its DualViTok architecture beside it (no machine paths)
    assert ours["mm_vision_tower"]["vq_config"] == "dualvitok_config.json"
    reloaded = IllumeQwen2ForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.rope_parameters["rope_theta"] == ours["rope_theta"] == built.model.config.rope_parameters["rope_theta"]
