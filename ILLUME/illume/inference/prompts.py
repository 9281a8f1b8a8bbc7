"""Prompt text of every inference task, exactly as the official inference code writes it (formats.md §4).

User content is inserted by concatenation, never by `str.format`, so captions containing braces
are safe. Generation and editing prompts end with the resolution tag after the open assistant
turn; understanding prompts carry no tag.
"""

from __future__ import annotations

from typing import Any

from illume.data.conversation import ChatTemplate, get_template
from illume.data.preprocess import tokenizer_image_token
from illume.vocab import IMAGE_TOKEN, resolution_tag

__all__ = [
    "TEXT_TO_IMAGE",
    "TEXT_TO_IMAGE_EVAL",
    "RANDOM_IMAGE",
    "EDITING",
    "EDITING_EVAL",
    "RECONSTRUCTION",
    "user_message",
    "understanding_message",
    "generation_prompt",
    "understanding_prompt",
    "tokenize_prompt",
]

# `{tag}` is the resolution tag, `{content}` the caption / instruction.
# Wording of the official ILLUME inference class (notebook, demo).
TEXT_TO_IMAGE = "Generate an image of {tag}, the content of image is {content}\n"
RANDOM_IMAGE = "Generate a random image of {tag}\n"
EDITING = "{tag}<image>\nPlease edit the image according to the instruction: {content}\n"
RECONSTRUCTION = "{tag}<image>\nReconstruct the image according to the given image\n"
# Wording of the official generation_eval datasets ("of the image"; instruction closed by ".").
TEXT_TO_IMAGE_EVAL = "Generate an image of {tag}, the content of the image is {content}\n"
EDITING_EVAL = "{tag}<image>\nPlease edit the image according to the instruction: {content}.\n"


def user_message(template: str, height: int, width: int, content: str = "") -> str:
    """Fill a task template with the `<height_H><width_W>` tag and the user's text."""
    tag = resolution_tag(height, width)
    head, sep, tail = template.partition("{content}")
    filled = head.replace("{tag}", tag) + (content if sep else "") + tail.replace("{tag}", tag)
    return filled


def understanding_message(question: str, num_images: int) -> str:
    """`<image>\\n` per image in front of the question unless it already places its images."""
    if num_images and IMAGE_TOKEN not in question:
        return (IMAGE_TOKEN + "\n") * num_images + question
    return question


def generation_prompt(message: str, height: int, width: int, template: str | ChatTemplate = "qwen2") -> str:
    """One user turn, the open assistant turn, then the resolution tag the model continues from."""
    chat = get_template(template) if isinstance(template, str) else template
    return chat.generation_prompt(message, resolution_tag(height, width))


def understanding_prompt(message: str, template: str | ChatTemplate = "qwen2") -> str:
    chat = get_template(template) if isinstance(template, str) else template
    return chat.generation_prompt(message)


def tokenize_prompt(prompt: str, tokenizer: Any) -> list[int]:
    """Ids with the -200 sentinel at each `<image>` (as the model's forward expects)."""
    return tokenizer_image_token(prompt, tokenizer)
