"""Prompt text of every inference task, exactly as the official inference code writes it (formats.md §4).

User content is inserted by concatenation, never by `str.format`, so captions containing braces
are safe. Generation and editing prompts end with the resolution tag after the open assistant
turn; understanding prompts carry no tag.

User text is text: every builder returns a `Prompt` that marks what the template wrote, and
`tokenize_prompt` turns control strings into control ids only there. A caption, question or
instruction containing `<|im_end|>`, `<height_64>`, `<|image_level0_5|>` or `<image>` is encoded
byte for byte like any other text. For ordinary text the ids equal those of tokenizing the whole
prompt string, because the tokenizer itself splits at added tokens before its BPE.
"""

from __future__ import annotations

import re
from typing import Any

from illume.data.conversation import ChatTemplate, Prompt, get_template
from illume.vocab import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, resolution_tag

__all__ = [
    "TEXT_TO_IMAGE",
    "TEXT_TO_IMAGE_EVAL",
    "RANDOM_IMAGE",
    "EDITING",
    "EDITING_EVAL",
    "RECONSTRUCTION",
    "Prompt",
    "user_message",
    "understanding_message",
    "generation_prompt",
    "understanding_prompt",
    "tokenize_prompt",
    "text_ids",
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


def user_message(template: str, height: int, width: int, content: str = "") -> Prompt:
    """Fill a task template with the `<height_H><width_W>` tag and the user's text (kept as user text)."""
    tag = resolution_tag(height, width)
    head, sep, tail = template.partition("{content}")
    parts = [Prompt.template(head.replace("{tag}", tag))]
    if sep:
        parts.append(str(content))
    parts.append(Prompt.template(tail.replace("{tag}", tag)))
    return Prompt.join(parts)


def understanding_message(question: str, num_images: int) -> Prompt:
    """`<image>\\n` per image (the template's placeholders) in front of the question (user text)."""
    return Prompt.join([Prompt.template((IMAGE_TOKEN + "\n") * num_images), str(question)])


def generation_prompt(message: str, height: int, width: int, template: str | ChatTemplate = "qwen2") -> Prompt:
    """One user turn, the open assistant turn, then the resolution tag the model continues from."""
    chat = get_template(template) if isinstance(template, str) else template
    return chat.generation_prompt(message, resolution_tag(height, width))


def understanding_prompt(message: str, template: str | ChatTemplate = "qwen2") -> Prompt:
    chat = get_template(template) if isinstance(template, str) else template
    return chat.generation_prompt(message)


# Where a template's text may hold a control string; which ones are real is the tokenizer's call.
_CONTROL_CANDIDATE = re.compile(r"<[^<>\s]+>")


def text_ids(text: str, tokenizer: Any) -> list[int]:
    """Ids of `text` as plain text: the tokenizer's normalizer, pre-tokenizer and BPE, no added tokens.

    (`split_special_tokens=True` is not enough: it ignores only *special* added tokens, and the
    image tokens, resolution tags included, are ordinary added tokens.)
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} has no `tokenizers` backend; ILLUME needs a fast tokenizer")
    if not text:
        return []
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    pieces = backend.pre_tokenizer.pre_tokenize_str(text) if backend.pre_tokenizer is not None else [(text, None)]
    return [token.id for piece, _ in pieces for token in backend.model.tokenize(piece)]


def _control_id(candidate: str, tokenizer: Any) -> int | None:
    """The id of an added (control) token, the sentinel for `<image>`, None for ordinary text."""
    if candidate == IMAGE_TOKEN:
        return IMAGE_TOKEN_INDEX
    backend = tokenizer.backend_tokenizer
    token_id = backend.token_to_id(candidate)
    if token_id is None or backend.model.token_to_id(candidate) is not None:
        return None
    return token_id


def tokenize_prompt(prompt: str, tokenizer: Any) -> list[int]:
    """Ids with the -200 sentinel at each template `<image>` (as the model's forward expects).

    Only the `Prompt.template_spans` of `prompt` may yield control ids; a plain `str` is all user
    text. Text between control tokens is encoded in one run, template and user parts together.
    """
    pieces = prompt.pieces() if isinstance(prompt, Prompt) else [(str(prompt), False)]
    ids: list[int] = []
    run: list[str] = []
    for text, is_template in pieces:
        position = 0
        for match in _CONTROL_CANDIDATE.finditer(text) if is_template else ():
            control = _control_id(match.group(), tokenizer)
            if control is not None:
                run.append(text[position : match.start()])
                ids += text_ids("".join(run), tokenizer)
                ids.append(control)
                run, position = [], match.end()
        run.append(text[position:])
    return ids + text_ids("".join(run), tokenizer)
