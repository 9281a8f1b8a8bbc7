"""Add the ILLUME+ image tokens to a Qwen2-family checkpoint (SPEC-mllm C4, formats.md §1).

The tokens are appended as plain (non-special) added tokens in the official order, so the ids of
the released checkpoints are reproduced for Qwen2.5. The embedding matrix grows by exactly the
number of added tokens *from its current row count* (Qwen pads its rows past `len(tokenizer)`),
which is why `vocab_size` (283047 for 3B) differs from `len(tokenizer)` (282776).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from illume.vocab import DEFAULT_CODEBOOK_SIZES, ImageVocabulary, extension_tokens

__all__ = ["extend_tokenizer", "extend_llm_with_vision_tokens"]

logger = logging.getLogger(__name__)


def extend_tokenizer(
    tokenizer: PreTrainedTokenizerBase, codebook_sizes: Sequence[int] = DEFAULT_CODEBOOK_SIZES
) -> ImageVocabulary:
    """Append the ILLUME tokens to `tokenizer` in place and return the resulting id layout.

    A tokenizer that already holds any of them is refused: re-adding would leave the code ids
    non-contiguous, and extending twice is always a mistake.
    """
    tokens = extension_tokens(codebook_sizes)
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present:
        raise ValueError(f"tokenizer already contains {len(present)} ILLUME token(s), e.g. {present[0]!r}")
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise RuntimeError(f"tokenizer added {added} of {len(tokens)} ILLUME tokens")
    probe = tokenizer.encode(tokens[-1], add_special_tokens=False)
    if len(probe) != 1:
        raise RuntimeError(f"{tokens[-1]!r} does not encode to a single id: {probe}")
    return ImageVocabulary.from_tokenizer(tokenizer, codebook_sizes)


def extend_llm_with_vision_tokens(
    model_path: str | os.PathLike,
    output_path: str | os.PathLike,
    semantic_codebook_size: int = DEFAULT_CODEBOOK_SIZES[0],
    pixel_codebook_size: int = DEFAULT_CODEBOOK_SIZES[1],
    dtype: torch.dtype = torch.bfloat16,
) -> ImageVocabulary:
    """Extend the tokenizer and the LLM at `model_path` and save both to `output_path`.

    New embedding (and untied LM-head) rows get the model's own init, N(0, initializer_range), as
    in the official script; existing rows, including Qwen's unused padding rows, are kept.
    """
    tokenizer = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"{model_path}: tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows"
        )
    layout = extend_tokenizer(tokenizer, (semantic_codebook_size, pixel_codebook_size))
    added = len(extension_tokens((semantic_codebook_size, pixel_codebook_size)))
    model.resize_token_embeddings(rows + added, mean_resizing=False)
    logger.info("added %d tokens; embedding rows %d -> %d", added, rows, rows + added)
    Path(output_path).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_path)
    tokenizer.save_pretrained(output_path)
    return layout
