"""What the demo accepts from a browser, checked before any model work.

A public demo must not let one request exhaust the machine: uploads are bounded by file size
(enforced by Gradio itself, see `InputLimits.max_file_size`), by pixel count (read from the image
header before decoding, via `vision_tokenizer.data.image_io.load_image`), prompts by length and
conversations by turns and images. Sampling settings go through the same checks as the pipeline
and the CLI (`illume.inference.validation`). Violations raise `InputError`, whose message is
shown to the user as is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from PIL import Image
from vision_tokenizer.data.image_io import ImageLoadError, load_image
from vision_tokenizer.utils.user_errors import UserError

from illume.inference.validation import InvalidSetting, check_sampling

__all__ = ["InputError", "InputLimits"]


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


class InputError(UserError, ValueError):
    """A request the demo refuses; the message is meant for the person who sent it."""


@dataclass(frozen=True)
class InputLimits:
    """Upper bounds for one request (defaults suit a single-GPU public demo)."""

    max_file_size: str = "20mb"
    max_image_pixels: int = 4096 * 4096
    max_prompt_chars: int = 2000
    max_new_tokens: int = 4096
    max_images_per_chat: int = 4
    max_turns_per_chat: int = 16

    def check_prompt(self, text: str | None, what: str = "prompt") -> str:
        """The stripped text; empty or too long is an `InputError`."""
        text = (text or "").strip()
        if not text:
            raise InputError(f"Please enter {_article(what)} {what}.")
        if len(text) > self.max_prompt_chars:
            raise InputError(f"The {what} has {len(text)} characters; the limit is {self.max_prompt_chars}.")
        return text

    def load_image(self, path: str | os.PathLike | None, what: str = "image") -> Image.Image:
        """An uploaded file as RGB, refused (with the reason) when it is not a usable image or too large."""
        if not path:
            raise InputError(f"Please upload {_article(what)} {what}.")
        try:
            return load_image(path, max_pixels=self.max_image_pixels)
        except ImageLoadError as err:
            raise InputError(f"The {what} cannot be used: {err.reason}.") from None

    def check_sampling(self, temperature: Any, top_k: Any, top_p: Any) -> tuple[float, int, float]:
        """(temperature, top-k, top-p) as numbers, refused with the pipeline's own message when out of range."""
        try:
            knobs = check_sampling(temperature, top_k, top_p)
        except InvalidSetting as err:
            raise InputError(f"{str(err)[:1].upper()}{str(err)[1:]}.") from None
        return knobs["temperature"], knobs["top_k"], knobs["top_p"]

    def check_new_tokens(self, value: int) -> int:
        value = int(value)
        if not 1 <= value <= self.max_new_tokens:
            raise InputError(f"Max output tokens must be between 1 and {self.max_new_tokens}, got {value}.")
        return value
