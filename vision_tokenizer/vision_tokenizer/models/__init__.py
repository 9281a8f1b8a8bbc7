"""DualViTok and its parts: semantic ViT branch, SimVQ quantizers, MoVQ pixel branch."""

from .configuration_dualvitok import DualViTokConfig
from .dualvitok import CodePair, DualViTok, DualViTokEncoding, DualViTokOutput
from .movq import MoVQConfig, MoVQDecoder, MoVQEncoder
from .quantizer import SimVQ
from .semantic import SemanticDecoder, SemanticEncoder
from .vit import build_vit, vit_config, vit_features
from .vit_input import RESOLUTION_MAPPING, prepare_vit_input, vit_target_size

__all__ = [
    "DualViTok",
    "DualViTokConfig",
    "CodePair",
    "DualViTokEncoding",
    "DualViTokOutput",
    "MoVQConfig",
    "MoVQDecoder",
    "MoVQEncoder",
    "SimVQ",
    "SemanticDecoder",
    "SemanticEncoder",
    "RESOLUTION_MAPPING",
    "build_vit",
    "prepare_vit_input",
    "vit_config",
    "vit_features",
    "vit_target_size",
]
