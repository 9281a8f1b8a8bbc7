"""Extend a Qwen2-family LLM with the ILLUME+ image tokens (same flags as the official script).

    python ILLUME/scripts/prepare_llm_with_extended_vision_tokenizer.py \
        --model_path ../checkpoints/Qwen2.5-3B-Instruct \
        --output_model_path ../checkpoints/Qwen2.5-3B-Instruct-with-vision-tokenizer-32k-96k-level2
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from illume.model.extend import extend_llm_with_vision_tokens
from illume.vocab import DEFAULT_CODEBOOK_SIZES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model_path", default="Qwen/Qwen2.5-0.5B-Instruct", help="LLM folder (or hub id) to extend"
    )
    parser.add_argument("--semantic_codebook_size", type=int, default=DEFAULT_CODEBOOK_SIZES[0])
    parser.add_argument("--pixel_codebook_size", type=int, default=DEFAULT_CODEBOOK_SIZES[1])
    parser.add_argument(
        "--output_model_path", required=True, help="where the extended LLM and tokenizer are saved"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    layout = extend_llm_with_vision_tokens(
        args.model_path, args.output_model_path, args.semantic_codebook_size, args.pixel_codebook_size
    )
    logging.getLogger(__name__).info(
        "saved to %s; special_tokens_ids %s, level ranges %s / %s",
        args.output_model_path,
        layout.special_tokens_ids,
        layout.level_range(0),
        layout.level_range(1),
    )


if __name__ == "__main__":
    main()
