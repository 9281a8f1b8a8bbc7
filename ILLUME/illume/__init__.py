"""ILLUME+: a Qwen2.5 LLM whose vocabulary is extended with DualViTok image codes.

Importing `illume` registers the model, configuration and processor with the transformers Auto
classes, so `AutoModelForCausalLM.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)`
load ILLUME+ folders without `trust_remote_code`.
"""

__version__ = "0.1.0"

from illume import hf as _hf  # noqa: E402,F401  (registers the processor classes)
from illume import model as _model  # noqa: E402,F401  (registers the model classes)
