"""ILLUME+ model classes; importing this package registers them with the transformers Auto classes."""

from transformers import AutoConfig, AutoModelForCausalLM

from illume.model.configuration_illume import ILLUMEQwen2Config
from illume.model.modeling_illume import IllumeQwen2ForCausalLM, IllumeQwen2Model, MultimodalInputs
from illume.model.projector import MixedProjector
from illume.model.vision_tower import DualVisionTower, TowerOutput

__all__ = [
    "ILLUMEQwen2Config",
    "IllumeQwen2Model",
    "IllumeQwen2ForCausalLM",
    "MultimodalInputs",
    "MixedProjector",
    "DualVisionTower",
    "TowerOutput",
]

AutoConfig.register(ILLUMEQwen2Config.model_type, ILLUMEQwen2Config, exist_ok=True)
AutoModelForCausalLM.register(ILLUMEQwen2Config, IllumeQwen2ForCausalLM, exist_ok=True)
