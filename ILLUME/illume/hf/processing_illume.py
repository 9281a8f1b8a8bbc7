"""Transformers-native processor of ILLUME+ folders: chat text + images → model inputs, codes → pixels.

`IllumeProcessor` is a regular `ProcessorMixin`, registered with `AutoProcessor` by `illume.hf`,
that loads from the exported `-hf` folder *and* from an origin-format folder (tokenizer files and
config.json only: the image settings are derived from `config.json`, the chat template is the
`qwen2` conversation template). Images go through the MLLM's `ImagePreprocessor` (the official
MoVQ image processor); each `<image>` of the text becomes its whole image block — the markers of
the vocabulary's layout and one `<|image_pad|>` per feature — so `input_ids` already have the
length the model runs at, and `pixel_values` lists one `[1, 3, H, W]` tensor in [-1, 1] per image.

Message content is user text: `apply_chat_template` returns a `Prompt` (`illume.data.conversation`)
whose template spans are what the chat template wrote, so a typed `<|im_end|>`, `<image>` or
`<height_64>` is tokenized as plain text (`illume.inference.prompts.tokenize_prompt`). A plain `str`
given to `processor(text=...)` is a prompt its caller wrote and keeps its control strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin
from vision_tokenizer.data.image_io import tensor_to_image

from illume.data.conversation import Prompt
from illume.data.images import ImagePreprocessor
from illume.data.preprocess import tokenizer_image_token
from illume.inference.prompts import tokenize_prompt
from illume.model.configuration_illume import IMAGE_PLACEHOLDER, IllumeQwen2Config, VisionTowerConfig
from illume.model.modeling_illume import image_block_ids
from illume.vocab import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, ImageGrid, ImageVocabulary

__all__ = ["QWEN2_CHAT_TEMPLATE", "IllumeImageProcessor", "IllumeProcessor"]

# The `qwen2` conversation template (illume.data.conversation) as Jinja, for `apply_chat_template`.
# Image parts of a message become `<image>\n` ahead of its text, as in the official prompts.
QWEN2_CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] if part['type'] == 'image' %}<image>\n{% endfor %}"
    "{% for part in message['content'] if part['type'] == 'text' %}{{ part['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CHAT_TEMPLATE_FILE = "chat_template.jinja"
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# Private-use characters around message content while the Jinja template renders, so the rendered
# text can say which parts the template wrote (stripped from the content first: they cannot be forged).
_USER_START, _USER_END = "\U000f1000", "\U000f1001"
_USER_SPAN = re.compile(f"{_USER_START}(.*?){_USER_END}", re.DOTALL)


class IllumeImageProcessor(BaseImageProcessor):
    """PIL images → `pixel_values`: one `[1, 3, H, W]` tensor in [-1, 1] per image (sizes may differ).

    `image_aspect_ratio`, `min_pixels` and `max_pixels` are the vision tower's settings
    (`config.image_aspect_ratio`, `config.mm_vision_tower`); `from_pretrained` of a folder without
    processor files derives them from its config.json.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        image_aspect_ratio: str = "anyres_dualvitok",
        min_pixels: int = VisionTowerConfig.min_pixels,
        max_pixels: int = VisionTowerConfig.max_pixels,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.image_aspect_ratio = image_aspect_ratio
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self._preprocessor = ImagePreprocessor(image_aspect_ratio, self.min_pixels, self.max_pixels)

    @classmethod
    def from_model_config(cls, config: IllumeQwen2Config) -> IllumeImageProcessor:
        tower = config.vision_tower_config or VisionTowerConfig()
        return cls(config.image_aspect_ratio, tower.min_pixels, tower.max_pixels)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> IllumeImageProcessor:
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not any((folder / name).is_file() for name in _IMAGE_PROCESSOR_FILES):
            return cls.from_model_config(IllumeQwen2Config.from_pretrained(folder))
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def to_dict(self) -> dict:
        values = super().to_dict()
        values.pop("_preprocessor", None)
        return values

    def preprocess(self, images: Image.Image | Sequence[Image.Image], **kwargs) -> BatchFeature:
        if isinstance(images, Image.Image):
            images = [images]
        tensors = []
        for k, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise TypeError(f"images[{k}] must be a PIL image, got {type(image).__name__}")
            tensors.append(self._preprocessor(image.convert("RGB")))
        return BatchFeature({"pixel_values": tensors})


class IllumeProcessor(ProcessorMixin):
    """Tokenizer + image processor of an ILLUME+ checkpoint; `processor(text=..., images=...)`."""

    def __init__(
        self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template or QWEN2_CHAT_TEMPLATE)
        self.vocabulary = ImageVocabulary.from_tokenizer(tokenizer)
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> IllumeProcessor:
        """From an exported `-hf` folder or an origin-format folder (no processor files needed)."""
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, padding_side=_padding_side(folder))
        template = folder / _CHAT_TEMPLATE_FILE
        chat_template = template.read_text(encoding="utf-8") if template.is_file() else None
        return cls(IllumeImageProcessor.from_pretrained(folder), tokenizer, chat_template=chat_template)

    def apply_chat_template(self, conversation: Any, *args, tokenize: bool = False, **kwargs) -> Any:
        """The template's text as a `Prompt` (`tokenize=False`) or its inputs; message content stays text.

        Transformers' opt-in `sanitize_control_tokens` is always on here (and wider: resolution tags,
        image tokens and `<image>` typed by a user are text too), so the flag is accepted and ignored.
        """
        kwargs.pop("sanitize_control_tokens", None)
        rendered = super().apply_chat_template(_mark_user_text(conversation), *args, tokenize=tokenize, **kwargs)
        if tokenize:
            return rendered
        return _as_prompt(rendered) if isinstance(rendered, str) else [_as_prompt(text) for text in rendered]

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Image.Image | Sequence[Image.Image] | None = None,
        return_tensors: str | None = "pt",
        videos: Any = None,
        audio: Any = None,
        **kwargs,
    ) -> BatchFeature:
        """Token ids with every `<image>` expanded to its block, padded once as the tokenizer says.

        `images` lists every image of every prompt in order of their `<image>` markers; a count
        mismatch is an error rather than a silent misalignment. Only a `Prompt`'s template spans
        (or a plain `str`, written by its caller) may hold control strings, `<image>` included.
        """
        if text is None:
            raise ValueError("IllumeProcessor needs text (a prompt containing one <image> per image)")
        if videos or audio:
            raise ValueError("ILLUME+ takes text and images only (no videos or audio)")
        # Options `apply_chat_template` forwards that have nothing to do here.
        unknown = sorted(k for k, v in kwargs.items() if v is not None and k not in ("padding", "add_special_tokens"))
        if unknown:
            raise TypeError(f"unsupported processor arguments: {unknown}")
        prompts = [text] if isinstance(text, str) else list(text)
        image_list = [] if images is None else ([images] if isinstance(images, Image.Image) else _flat(images))
        token_ids = [self._prompt_ids(prompt) for prompt in prompts]
        markers = sum(ids.count(IMAGE_TOKEN_INDEX) for ids in token_ids)
        if markers != len(image_list):
            raise ValueError(
                f"the prompts contain {markers} {IMAGE_TOKEN} markers but {len(image_list)} images were given"
            )
        pixel_values = self.image_processor(image_list)["pixel_values"] if image_list else []
        blocks = iter(self._block(pixels) for pixels in pixel_values)
        sequences = []
        for prompt_ids in token_ids:
            ids = []
            for token in prompt_ids:
                ids.extend(next(blocks) if token == IMAGE_TOKEN_INDEX else [token])
            sequences.append(ids)
        data: dict[str, Any] = self._pad(sequences)
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if return_tensors is None:
            data = {key: value.tolist() for key, value in data.items()}
        if pixel_values:
            data["pixel_values"] = pixel_values
        return BatchFeature(data)

    def _prompt_ids(self, prompt: str) -> list[int]:
        """Ids with -200 per `<image>`: a `Prompt` (or marked chat text) keeps its user text as text."""
        if isinstance(prompt, Prompt) or _USER_START in prompt:
            return tokenize_prompt(_as_prompt(prompt), self.tokenizer)
        return tokenizer_image_token(prompt, self.tokenizer)

    def _block(self, pixels: torch.Tensor) -> list[int]:
        grid = ImageGrid.for_resolution(*pixels.shape[-2:])
        ids, _ = image_block_ids(grid, self.vocabulary.special_tokens_ids, self.image_token_id)
        return ids.tolist()

    def _pad(self, sequences: list[list[int]]) -> dict[str, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token")
        length = max(len(ids) for ids in sequences)
        ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        left = self.tokenizer.padding_side == "left"
        for row, seq in enumerate(sequences):
            span = slice(length - len(seq), length) if left else slice(0, len(seq))
            ids[row, span] = torch.tensor(seq, dtype=torch.long)
            mask[row, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode_images(self, token_ids: Any, dualvitok: torch.nn.Module) -> list[Image.Image]:
        """Pixels of every image block in generated ids (one row or a batch), decoded by `dualvitok`."""
        ids = torch.as_tensor(token_ids)
        rows = ids.tolist() if ids.ndim == 2 else [ids.tolist()]
        images = []
        with torch.no_grad():
            for row in rows:
                for semantic, pixel in self.vocabulary.extract_image_codes(row):
                    device = dualvitok.device
                    decoded = dualvitok.decode_code(semantic[None].to(device), pixel[None].to(device))
                    images.append(tensor_to_image(decoded[0]))
        return images

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


def _mark_user_text(conversation: Any) -> Any:
    """A copy of one conversation (or a batch) with every message's text wrapped in the user markers."""
    if isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], (list, tuple)):
        return [_mark_user_text(chat) for chat in conversation]
    return [{**message, "content": _mark_content(message.get("content"))} for message in conversation]


def _mark_content(content: Any) -> Any:
    if isinstance(content, str):
        return _USER_START + content.replace(_USER_START, "").replace(_USER_END, "") + _USER_END
    if isinstance(content, list):
        return [{**part, "text": _mark_content(part["text"])} if "text" in part else part for part in content]
    return content


def _as_prompt(text: str) -> Prompt:
    """Rendered chat text → a `Prompt` whose template spans are everything outside the user markers."""
    if isinstance(text, Prompt):
        return text
    parts: list[str] = []
    position = 0
    for match in _USER_SPAN.finditer(text):
        parts += [Prompt.template(_unmarked(text[position : match.start()])), match.group(1)]
        position = match.end()
    parts.append(Prompt.template(_unmarked(text[position:])))
    return Prompt.join(parts)


def _unmarked(text: str) -> str:
    """Template text without stray markers (a template that split a message's text)."""
    return text.replace(_USER_START, "").replace(_USER_END, "")


def _flat(images: Sequence[Any]) -> list[Image.Image]:
    """`apply_chat_template` passes one list of images per conversation."""
    flat: list[Image.Image] = []
    for item in images:
        flat.extend(_flat(item) if isinstance(item, (list, tuple)) else [item])
    return flat


def _padding_side(folder: Path) -> str:
    """The model's `tokenizer_padding_side` (left for ILLUME+), read from config.json as JSON."""
    config = folder / "config.json"
    if config.is_file():
        return str(json.loads(config.read_text(encoding="utf-8")).get("tokenizer_padding_side", "left"))
    return "left"
