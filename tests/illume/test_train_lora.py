"""LoRA runs with the official switches: the loss falls, a peft adapter smaller than the model is
saved, merged and adapter models agree, a resumed run replays the same losses exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from illume.adapter import merge_adapter
from illume.inference.pipeline import IllumePipeline
from illume.model import IllumeQwen2ForCausalLM
from illume.train.lora import main as lora_main
from illume.train.model_builder import build_model_and_tokenizer, save_vq_config
from illume.train.train import resolve_path, run
from illume.vocab import ImageVocabulary
from transformers import AutoTokenizer
from vision_tokenizer.utils.config import load_config

from tests.illume.test_train import TINY_CONFIG, write_tiny_llm

pytest.importorskip("peft", reason="LoRA needs peft: pip install -e '.[train]'")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ILLUME+ checkpoint (tiny LLM + random tower + projector): the base a LoRA run starts from."""
    llm = write_tiny_llm(tmp_path_factory.mktemp("lora_llm"))
    cfg = load_config(TINY_CONFIG, {"model_args.language_model.pretrained_model_name_or_path": str(llm)})
    built = build_model_and_tokenizer(cfg.model_args, 2048, resolve=resolve_path)
    out = tmp_path_factory.mktemp("lora_base")
    built.model.save_pretrained(out)
    built.tokenizer.save_pretrained(out)
    save_vq_config(out, built.vq_model_config)
    return out


def _lora_config(base: Path, out: Path):
    return load_config(
        TINY_CONFIG,
        {
            "model_args.language_model.pretrained_model_name_or_path": str(base),
            "model_args.unfreeze_text_embedding": False,  # only the ILLUME rows learn
            "model_args.mm_vision_tower.trainable": False,
            "training_args.output_dir": str(out),
            "training_args.lora_enable": True,
            "training_args.lora_r": 8,
            "training_args.lora_alpha": 16,
            "training_args.lora_dropout": 0.0,
            "training_args.learning_rate": 2e-3,
            "training_args.max_steps": 15,
            "training_args.save_steps": 5,
        },
    )


def _losses(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def lora_run(base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora_run")
    run(_lora_config(base_dir, out))
    return out


@pytest.mark.slow
def test_lora_run_learns_and_saves_a_small_peft_adapter(base_dir: Path, lora_run: Path) -> None:
    logs = _losses(lora_run)
    assert [r["step"] for r in logs] == list(range(1, 16))
    # Three epochs of the same 5 samples (in different orders): the last epoch's mean loss is lower.
    epochs = [sum(r["loss"] for r in logs[i : i + 5]) / 5 for i in (0, 5, 10)]
    assert epochs[2] < epochs[0] - 0.2, epochs
    config = json.loads((lora_run / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert "mm_projector" in " ".join(config["modules_to_save"])
    adapter = (lora_run / "adapter_model.safetensors").stat().st_size
    assert adapter < (base_dir / "model.safetensors").stat().st_size


@pytest.mark.slow
def test_merged_checkpoint_gives_the_adapter_models_logits(base_dir: Path, lora_run: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    ids = torch.tensor([[321, 84, 82, -200, 322, 198, 321, 77]])
    image = [torch.rand(1, 3, 64, 96) * 2 - 1]
    base = IllumeQwen2ForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        base_logits = base(input_ids=ids, images=image).logits
        adapter_logits = PeftModel.from_pretrained(base, str(lora_run)).eval()(input_ids=ids, images=image).logits
    lora_main(["merge", str(base_dir), str(lora_run), str(tmp_path / "merged")])
    with pytest.raises(SystemExit) as bad:  # not an adapter folder: one line, exit 2
        lora_main(["merge", str(base_dir), str(base_dir), str(tmp_path / "nothing")])
    assert bad.value.code == 2 and not (tmp_path / "nothing").exists()
    merged = IllumeQwen2ForCausalLM.from_pretrained(tmp_path / "merged").eval()
    again = merge_adapter(IllumeQwen2ForCausalLM.from_pretrained(base_dir), lora_run).eval()
    piped = IllumePipeline.from_pretrained(base_dir, adapter=lora_run, device="cpu", dtype="float32").model
    with torch.no_grad():
        merged_logits = merged(input_ids=ids, images=image).logits
        again_logits = again(input_ids=ids, images=image).logits
        piped_logits = piped(input_ids=ids, images=image).logits
    assert (adapter_logits - base_logits).abs().max() > 1e-3  # the adapter changed the model
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again_logits, merged_logits, rtol=0, atol=0)
    torch.testing.assert_close(piped_logits, merged_logits, rtol=0, atol=0)
    # unfreeze_vision_embedding alone: the ILLUME rows learned, Qwen's text rows did not move.
    first = ImageVocabulary.from_tokenizer(AutoTokenizer.from_pretrained(base_dir)).text_token_num
    fresh = IllumeQwen2ForCausalLM.from_pretrained(base_dir)  # peft wrapped `base` in place
    rows, base_rows = merged.get_input_embeddings().weight, fresh.get_input_embeddings().weight
    assert torch.equal(rows[:first], base_rows[:first]) and not torch.equal(rows[first:], base_rows[first:])


@pytest.mark.slow
def test_lora_run_resumes_exactly(base_dir: Path, lora_run: Path, tmp_path: Path) -> None:
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(lora_run / "checkpoint-10", resumed / "checkpoint-10")
    run(_lora_config(base_dir, resumed))
    after, before = _losses(resumed), _losses(lora_run)
    assert [r["step"] for r in after] == list(range(11, 16))
    for got, want in zip(after, before[10:]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6), (got, want)
