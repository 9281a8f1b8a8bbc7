"""Training data of the ILLUME+ MLLM: chat template, label masking, datasets, collator, sampler."""

from illume.data.builder import build_training_dataset
from illume.data.collator import SupervisedCollator
from illume.data.conversation import CHAT_TEMPLATES, ChatTemplate, get_template
from illume.data.datasets import (
    DATASET_TYPES,
    DefaultDataset,
    MixedDataset,
    SingleTurnEditDataset,
    Text2ImageDataset,
)
from illume.data.errors import MalformedRecord, RecordErrorPolicy, RecordLocation
from illume.data.images import IMAGE_ASPECT_RATIO_MODES, ImagePreprocessor
from illume.data.preprocess import conversation_messages, tokenize_conversation, tokenizer_image_token
from illume.data.sampler import ModalityLengthGroupedSampler

__all__ = [
    "build_training_dataset",
    "SupervisedCollator",
    "CHAT_TEMPLATES",
    "ChatTemplate",
    "get_template",
    "DATASET_TYPES",
    "DefaultDataset",
    "MixedDataset",
    "SingleTurnEditDataset",
    "Text2ImageDataset",
    "MalformedRecord",
    "RecordErrorPolicy",
    "RecordLocation",
    "IMAGE_ASPECT_RATIO_MODES",
    "ImagePreprocessor",
    "conversation_messages",
    "tokenize_conversation",
    "tokenizer_image_token",
    "ModalityLengthGroupedSampler",
]
