"""DualViTok, the dual image tokenizer of ILLUME+ (semantic ViT branch + MoVQ pixel branch)."""

__version__ = "0.1.0"
