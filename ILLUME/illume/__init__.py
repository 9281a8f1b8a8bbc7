"""ILLUME+: a Qwen2.5 LLM whose vocabulary is extended with DualViTok image codes."""

__version__ = "0.1.0"
