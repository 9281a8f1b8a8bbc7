"""HF format of ILLUME+: the processor, the transformers-facing model class, export and converters.

Importing this package registers `IllumeProcessor` / `IllumeImageProcessor` with `AutoProcessor`
/ `AutoImageProcessor`, and `IllumeForConditionalGeneration` with `AutoModelForCausalLM` /
`AutoModelForImageTextToText` (`illume.model` registers `AutoConfig` / `AutoModel`), so origin and
exported folders load through the Auto classes without `trust_remote_code`.
"""

from transformers import AutoImageProcessor, AutoProcessor

from illume.hf.convert import convert_origin, convert_remote_hf, export_hf, load_origin_model
from illume.hf.modeling import IllumeForConditionalGeneration
from illume.hf.processing_illume import QWEN2_CHAT_TEMPLATE, IllumeImageProcessor, IllumeProcessor
from illume.model import IllumeQwen2Config

__all__ = [
    "QWEN2_CHAT_TEMPLATE",
    "IllumeForConditionalGeneration",
    "IllumeImageProcessor",
    "IllumeProcessor",
    "load_origin_model",
    "export_hf",
    "convert_origin",
    "convert_remote_hf",
]

AutoImageProcessor.register(IllumeQwen2Config, slow_image_processor_class=IllumeImageProcessor, exist_ok=True)
AutoProcessor.register(IllumeQwen2Config, IllumeProcessor, exist_ok=True)
