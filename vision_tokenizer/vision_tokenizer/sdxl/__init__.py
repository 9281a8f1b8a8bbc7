"""The SDXL diffusion decoder of ILLUME+: DualViTok codes -> image at twice the token resolution.

Needs the `decoder` extra (diffusers). `DualViTokSDXLDecoderPipeline` loads the released
`dualvitok-sdxl-decoder` folder; `python -m vision_tokenizer.sdxl CONFIG` trains a new one.
"""

from .pipeline import DualViTokSDXLDecoderPipeline, DualViTokSDXLDecoderPipelineOutput
from .resolutions import DECODER_SIZES, nearest_decoder_size, resolution_index

__all__ = [
    "DualViTokSDXLDecoderPipeline",
    "DualViTokSDXLDecoderPipelineOutput",
    "DECODER_SIZES",
    "nearest_decoder_size",
    "resolution_index",
]
