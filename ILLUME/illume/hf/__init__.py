"""HF format of ILLUME+: a processor registered with the Auto classes, export and converters.

Importing this package registers `IllumeProcessor` / `IllumeImageProcessor` with `AutoProcessor`
/ `AutoImageProcessor` (the model classes register with `illume.model`), so an exported folder
loads through the Auto classes without `trust_remote_code`.
"""

from transformers import AutoImageProcessor, AutoProcessor

from illume.hf.convert import convert_origin, convert_remote_hf, export_hf, load_origin_model
from illume.hf.processing_illume import QWEN2_CHAT_TEMPLATE, IllumeImageProcessor, IllumeProcessor
from illume.model import ILLUMEQwen2Config

__all__ = [
    "QWEN2_CHAT_TEMPLATE",
    "IllumeImageProcessor",
    "IllumeProcessor",
    "load_origin_model",
    "export_hf",
    "convert_origin",
    "convert_remote_hf",
]

AutoImageProcessor.register(ILLUMEQwen2Config, slow_image_processor_class=IllumeImageProcessor, exist_ok=True)
AutoProcessor.register(ILLUMEQwen2Config, IllumeProcessor, exist_ok=True)
