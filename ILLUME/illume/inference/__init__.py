"""ILLUME+ inference: structured decoding engine, sampling, and the understanding/generation/editing pipeline."""

from illume.inference.engine import GenerationEngine, PromptEmbeddings, RowSpec
from illume.inference.pipeline import ChatReply, IllumePipeline, ImageCodes
from illume.inference.sampling import SamplingConfig, SamplingParams, cfg_combine

__all__ = [
    "IllumePipeline",
    "ImageCodes",
    "ChatReply",
    "GenerationEngine",
    "PromptEmbeddings",
    "RowSpec",
    "SamplingConfig",
    "SamplingParams",
    "cfg_combine",
]
