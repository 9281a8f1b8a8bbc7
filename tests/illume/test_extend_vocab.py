"""The vocabulary-extension script on a tiny random Qwen2 checkpoint (codebooks scaled 128x down).

The golden tiny tokenizer was produced by the official script from a 342-token base with
codebooks [256, 768]; stripping its ILLUME tokens gives that base back, so the extended result
must reproduce the golden tokenizer exactly (formats.md layout at tiny scale).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from illume.model.extend import extend_llm_with_vision_tokens, extend_tokenizer
from illume.vocab import ImageVocabulary
from safetensors.torch import load_file
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

SCRIPT = (
    Path(__file__).resolve().parents[2]
    / "ILLUME"
    / "scripts"
    / "prepare_llm_with_extended_vision_tokenizer.py"
)

BASE_TOKENS = 342  # golden tiny tokenizer before extension (320 BPE + 22 Qwen2.5 added tokens)
BASE_ROWS = 384  # its embedding rows, padded like Qwen's 151665 -> 151936
CODEBOOKS = (256, 768)


def _base_tokenizer_dir(golden: Path, target: Path) -> Path:
    """The golden tiny tokenizer with every ILLUME token removed."""
    shutil.copytree(golden / "mllm_tiny_tokenizer", target)
    (target / "added_tokens.json").unlink()
    tok_json = json.loads((target / "tokenizer.json").read_text())
    tok_json["added_tokens"] = [t for t in tok_json["added_tokens"] if t["id"] < BASE_TOKENS]
    (target / "tokenizer.json").write_text(json.dumps(tok_json))
    cfg = json.loads((target / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {
        k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < BASE_TOKENS
    }
    (target / "tokenizer_config.json").write_text(json.dumps(cfg))
    return target


def _tiny_qwen2(folder: Path, tie: bool) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=BASE_ROWS,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=tie,
        pad_token_id=320,
        eos_token_id=322,
    )
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    return model


@pytest.fixture(params=[True, False], ids=["tied", "untied"])
def base_checkpoint(request, golden: Path, tmp_path: Path) -> tuple[Path, Qwen2ForCausalLM]:
    folder = _base_tokenizer_dir(golden, tmp_path / "base")
    assert len(AutoTokenizer.from_pretrained(folder)) == BASE_TOKENS
    return folder, _tiny_qwen2(folder, tie=request.param)


def test_script_reproduces_golden_tiny_layout(golden: Path, tmp_path: Path, base_checkpoint) -> None:
    folder, original = base_checkpoint
    out = tmp_path / "extended"
    if original.config.tie_word_embeddings:  # once through the real command line, once through the function
        flags = ["--semantic_codebook_size", "256", "--pixel_codebook_size", "768"]
        command = [
            sys.executable,
            str(SCRIPT),
            "--model_path",
            str(folder),
            *flags,
            "--output_model_path",
            str(out),
        ]
        subprocess.run(command, check=True, capture_output=True)
    else:
        extend_llm_with_vision_tokens(folder, out, *CODEBOOKS)
    extended = AutoTokenizer.from_pretrained(out, padding_side="left")
    reference = AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer", padding_side="left")
    assert len(extended) == len(reference) == 1405
    assert ImageVocabulary.from_tokenizer(extended) == ImageVocabulary.from_tokenizer(reference)

    ours = json.loads((out / "tokenizer.json").read_text())["added_tokens"]
    theirs = json.loads((golden / "mllm_tiny_tokenizer" / "tokenizer.json").read_text())["added_tokens"]
    assert ours == theirs  # ids, strings and flags (plain, normalized, not special)

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == BASE_ROWS + 1063 == 1447
    assert config["tie_word_embeddings"] == original.config.tie_word_embeddings
    weights = load_file(out / "model.safetensors")
    emb = weights["model.embed_tokens.weight"]
    assert emb.dtype == torch.bfloat16 and emb.shape == (1447, 16)
    old = original.model.embed_tokens.weight.detach()
    assert torch.equal(emb[:BASE_ROWS], old.to(torch.bfloat16))  # incl. the unused padding rows
    new = emb[BASE_ROWS:].float()
    assert (
        abs(new.std().item() - original.config.initializer_range) < 0.004 and abs(new.mean().item()) < 0.002
    )
    if original.config.tie_word_embeddings:
        assert "lm_head.weight" not in weights
    else:
        head = weights["lm_head.weight"]
        assert head.shape == (1447, 16)
        assert torch.equal(head[:BASE_ROWS], original.lm_head.weight.detach().to(torch.bfloat16))


def test_code_tokens_encode_to_single_ids(golden: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(_base_tokenizer_dir(golden, tmp_path / "base"))
    layout = extend_tokenizer(tokenizer, CODEBOOKS)
    text = "of <height_512><width_1024><|image_level0_255|><|image_level1_0|>"
    ids = tokenizer.encode(text)
    assert ids[-4:] == [
        layout.height_tag_id(512),
        layout.width_tag_id(1024),
        layout.level_range(0)[1] - 1,
        layout.level_range(1)[0],
    ]
    assert tokenizer.decode(ids[-2:], skip_special_tokens=True) == "<|image_level0_255|><|image_level1_0|>"


def test_extending_twice_is_refused(golden: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(golden / "mllm_tiny_tokenizer")
    with pytest.raises(ValueError, match="already contains"):
        extend_tokenizer(tokenizer, CODEBOOKS)


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="nowhere"):
        extend_llm_with_vision_tokens(tmp_path / "nowhere", tmp_path / "out", *CODEBOOKS)
    assert not (tmp_path / "out").exists()
