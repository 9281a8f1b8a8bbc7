"""ILLUME+: a Qwen2.5 LLM whose vocabulary is extended with DualViTok image codes.

`import illume` is cheap (no torch or transformers), so the `illume` CLI starts fast. Call
`illume.register()` — our loaders do — to register the configuration, models and processors with
the transformers Auto classes; then `AutoModelForCausalLM.from_pretrained(folder)` and
`AutoProcessor.from_pretrained(folder)` load ILLUME+ folders without `trust_remote_code`
(importing `illume.model` registers the config and model classes, `illume.hf` the rest).
"""

__version__ = "0.1.0"

__all__ = ["register"]


def register() -> None:
    """Register every ILLUME+ class with the transformers Auto classes (idempotent)."""
    import illume.hf  # noqa: F401  (registers the processors and the generation class)
    import illume.model  # noqa: F401  (registers the config and model classes)
