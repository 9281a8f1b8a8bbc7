"""A tiny Qwen2-architecture LLM with a small byte-level BPE vocabulary, for the quick start.

Why not the real Qwen2.5 vocabulary: the quick-start LLM starts from random weights, so its
151,665 text rows would all be untrained anyway; they would only make the embedding and the
output layer 300x larger than the rest of the model and dominate CPU training time. A BPE trained
on the quick-start texts (same normaliser, pre-tokenizer regex, byte-level alphabet and ChatML
special tokens as Qwen2.5) keeps every prompt encodable while staying a few hundred tokens large.
The checkpoint is then extended with the ILLUME image tokens by the project's extension function
(`illume.model.extend.extend_llm_with_vision_tokens`), exactly as a real Qwen2.5 checkpoint is.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from illume.data.conversation import get_template
from illume.model.extend import extend_llm_with_vision_tokens
from illume.vocab import ImageVocabulary

__all__ = ["PAD_TOKEN", "CHAT_TOKENS", "train_bpe_tokenizer", "write_base_llm", "build_extended_llm"]

PAD_TOKEN = "<|endoftext|>"
# The ChatML markers the `qwen2` template writes, in Qwen2.5's order (pad first).
CHAT_TOKENS = (PAD_TOKEN, "<|im_start|>", "<|im_end|>")
# Qwen2.5's pre-tokenizer split: contractions, letters, single digits, punctuation runs, spaces.
_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Embedding rows are padded to a multiple of this, as Qwen pads its vocabulary.
_ROW_MULTIPLE = 64


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A Qwen2.5-style byte-level BPE learned from `texts`, with the ChatML tokens appended last."""
    template = get_template("qwen2")
    corpus = list(texts) + [template.system_turn, *template.roles]
    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    core.train_from_iterator(corpus, trainer)
    core.add_special_tokens(list(CHAT_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        eos_token="<|im_end|>",
        additional_special_tokens=list(CHAT_TOKENS[1:]),
        padding_side="left",
    )
    for text in corpus:
        if tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) != text:
            raise RuntimeError(f"the trained BPE does not round-trip {text!r}")
    return tokenizer


def write_base_llm(
    folder: str | os.PathLike,
    tokenizer: PreTrainedTokenizerFast,
    llm_config: Mapping[str, Any],
    seed: int = 0,
) -> Path:
    """Save a randomly initialised Qwen2 (sizes from `llm_config`) and its tokenizer to `folder`."""
    folder = Path(folder)
    rows = -(-len(tokenizer) // _ROW_MULTIPLE) * _ROW_MULTIPLE
    config = Qwen2Config(
        **dict(llm_config),
        vocab_size=rows,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _mark_as_qwen2_tokenizer(folder)
    return folder


def _mark_as_qwen2_tokenizer(folder: Path) -> None:
    """Record the Qwen2 tokenizer class, as a real Qwen2.5 checkpoint does."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_extended_llm(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    llm_config: Mapping[str, Any],
    codebook_sizes: tuple[int, int],
    bpe_vocab_size: int = 512,
    seed: int = 0,
) -> ImageVocabulary:
    """Train the BPE, write the base LLM to `out_dir/base` and its extended copy to `out_dir/extended`."""
    out_dir = Path(out_dir)
    tokenizer = train_bpe_tokenizer(texts, bpe_vocab_size)
    base = write_base_llm(out_dir / "base", tokenizer, llm_config, seed=seed)
    reloaded = AutoTokenizer.from_pretrained(base)
    probe = get_template("qwen2").system_turn
    if reloaded.encode(probe, add_special_tokens=False) != tokenizer.encode(probe, add_special_tokens=False):
        raise RuntimeError(f"{base}: the saved tokenizer encodes differently after reloading")
    return extend_llm_with_vision_tokens(
        base, out_dir / "extended", codebook_sizes[0], codebook_sizes[1], dtype=torch.float32
    )
