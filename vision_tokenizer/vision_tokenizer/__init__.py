"""DualViTok, the dual image tokenizer of ILLUME+ (semantic ViT branch + MoVQ pixel branch).

`from vision_tokenizer import DualViTok, DualViTokConfig` works; the model code is imported on
first use, so `import vision_tokenizer` (and the `dualvitok --help` CLI) stays cheap.
"""

__version__ = "0.1.0"

__all__ = ["DualViTok", "DualViTokConfig"]


def __getattr__(name: str):
    if name == "DualViTok":
        from .models.dualvitok import DualViTok

        return DualViTok
    if name == "DualViTokConfig":
        from .models.configuration_dualvitok import DualViTokConfig

        return DualViTokConfig
    raise AttributeError(f"module 'vision_tokenizer' has no attribute {name!r}")
