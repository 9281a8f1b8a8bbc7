"""ILLUME+ model classes; importing this package registers them with the transformers Auto classes.

`AutoConfig`, `AutoModel` (the decoder with the vision tower) and `AutoModelForCausalLM` map the
`illume_qwen2` model type to these classes; `illume.hf` adds the processors and the generation
class for `AutoModelForImageTextToText` (`illume.register()` does both).
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from illume.model.configuration_illume import ILLUMEQwen2Config, IllumeQwen2Config, VisionTowerConfig
from illume.model.modeling_illume import IllumeQwen2ForCausalLM, IllumeQwen2Model, MultimodalInputs
from illume.model.projector import MixedProjector
from illume.model.vision_tower import DualVisionTower, TowerOutput

__all__ = [
    "IllumeQwen2Config",
    "ILLUMEQwen2Config",
    "VisionTowerConfig",
    "IllumeQwen2Model",
    "IllumeQwen2ForCausalLM",
    "MultimodalInputs",
    "MixedProjector",
    "DualVisionTower",
    "TowerOutput",
]

AutoConfig.register(IllumeQwen2Config.model_type, IllumeQwen2Config, exist_ok=True)
AutoModel.register(IllumeQwen2Config, IllumeQwen2Model, exist_ok=True)
AutoModelForCausalLM.register(IllumeQwen2Config, IllumeQwen2ForCausalLM, exist_ok=True)
