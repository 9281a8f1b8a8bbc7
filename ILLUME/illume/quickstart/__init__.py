"""The quick start: one command trains a tiny ILLUME+ on bundled photos and reports on it.

Stages, in order (each resumable, see `illume.quickstart.runner`): `data` (photos, captions,
edits, questions in the official jsonl layout), `tokenizer` (DualViTok training), `codebooks`
(codebook inference), `llm` (small BPE + random Qwen2 + vocabulary extension), `mllm` (torchrun
MLLM training), `inference` (IllumePipeline: generate, edit, understand) and `report` (HTML).
Entry points: `run_quickstart` (illume.quickstart.run), `illume quickstart`, `make quickstart`.
This module stays import-light so that the command line's help is instant.
"""

STAGES = ("data", "tokenizer", "codebooks", "llm", "mllm", "inference", "report")

__all__ = ["STAGES"]
