"""Throughput switches a training config sets, and the precision / ZeRO-3 guards of the trainer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from illume.train.arguments import build_training_arguments
from illume.train.train import resolve_path
from illume.train.trainer import check_master_weights, pixel_encoder_calls
from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.illume.test_mllm_golden import build_golden_model
from tests.illume.test_train import _config, _trainer, tiny_llm  # noqa: F401  (fixture)


def test_fused_adamw_and_selective_checkpointing_come_from_the_config(tiny_llm: Path, tmp_path: Path) -> None:  # noqa: F811
    cfg = _config(
        tiny_llm,
        tmp_path,
        **{"training_args.optim": "adamw_torch_fused",
           "training_args.gradient_checkpointing_kwargs": {"every_n_layers": 2}},
    )  # fmt: skip
    trainer = _trainer(cfg)
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    assert trainer.optimizer.defaults["fused"] is True
    kwargs = dict(trainer.args.activation_checkpointing_kwargs)
    every = kwargs.pop("every_n_layers")
    assert (every, kwargs) == (2, {"use_reentrant": False})
    trainer.model.activation_checkpointing_enable(kwargs, every_n_layers=every)
    layers = trainer.model.get_decoder().layers
    assert [layer.gradient_checkpointing for layer in layers] == [i % 2 == 0 for i in range(len(layers))]


def test_trainable_half_precision_weights_need_deepspeed() -> None:
    config = Qwen2Config(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    model = Qwen2ForCausalLM(config)
    check_master_weights(model, deepspeed=False)  # fp32: fine
    model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="DeepSpeed"):
        check_master_weights(model, deepspeed=False)
    check_master_weights(model, deepspeed=True)  # DeepSpeed keeps fp32 master copies
    model.requires_grad_(False)
    check_master_weights(model, deepspeed=False)  # frozen bf16 weights are not updated


def test_pixel_encoder_call_count_matches_the_tower(golden: Path) -> None:
    tower = build_golden_model(golden).get_model().vision_tower
    calls = []
    tower.pixel_encoder.register_forward_hook(lambda *_: calls.append(1))
    a, b = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 96)
    for images in ([a], [a, a.clone()], [a, b], [a, b, a]):
        calls.clear()
        with torch.no_grad():
            tower(images)
        assert pixel_encoder_calls(images) == len(calls), [tuple(i.shape) for i in images]
    with torch.no_grad():
        calls.clear()
        tower.encode_placeholder()  # what an image-less step runs
    assert pixel_encoder_calls([]) == len(calls)


def test_config_checkpointing_kwargs_keep_non_reentrant_default(tmp_path: Path) -> None:
    args = build_training_arguments(
        {"output_dir": str(tmp_path), "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": 3}},
        resolve_path,
    )
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False, "every_n_layers": 3}

