"""ILLUME+ inference: structured decoding engine, sampling, and the understanding/generation/editing pipelines."""

from illume.inference.engine import GenerationEngine, PromptEmbeddings, RowSpec
from illume.inference.sampling import SamplingConfig, SamplingParams, cfg_combine

__all__ = ["GenerationEngine", "PromptEmbeddings", "RowSpec", "SamplingConfig", "SamplingParams", "cfg_combine"]
