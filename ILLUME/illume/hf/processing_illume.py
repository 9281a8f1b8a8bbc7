"""Transformers-native processor of the HF-format folder: chat text + images → model inputs.

The released "-hf" checkpoints need remote code for this step; here it is a regular
`ProcessorMixin` registered with `AutoProcessor` when `illume.hf` is imported, so
`AutoProcessor.from_pretrained(folder)` works without `trust_remote_code`. It adds no logic of
its own: images go through the MLLM's `ImagePreprocessor` (the official MoVQ image processor) and
text through `tokenizer_image_token`, so its output is exactly what the training/inference code
feeds `IllumeQwen2ForCausalLM`: `input_ids` with one -200 per `<image>`, and `images` as a list
of `[1, 3, H, W]` tensors in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

from illume.data.images import ImagePreprocessor
from illume.data.preprocess import tokenizer_image_token
from illume.vocab import IMAGE_TOKEN

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


class IllumeImageProcessor(BaseImageProcessor):
    """PIL images → `images`: one `[1, 3, H, W]` tensor in [-1, 1] per image (sizes may differ).

    `image_aspect_ratio`, `min_pixels` and `max_pixels` are the vision tower's settings
    (`config.image_aspect_ratio`, `config.mm_vision_tower`).
    """

    model_input_names = ["images"]

    def __init__(
        self,
        image_aspect_ratio: str = "anyres_dualvitok",
        min_pixels: int = 32 * 32,
        max_pixels: int = 768 * 768,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.image_aspect_ratio = image_aspect_ratio
        self.min_pixels = int(min_pixels)
        self.max_pixels = int(max_pixels)
        self._preprocessor = ImagePreprocessor(image_aspect_ratio, self.min_pixels, self.max_pixels)

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
        return BatchFeature({"images": tensors})


class IllumeProcessor(ProcessorMixin):
    """Tokenizer + image processor of an ILLUME+ checkpoint; `processor(text=..., images=...)`."""

    def __init__(
        self, image_processor=None, tokenizer=None, chat_template: str | None = None, **kwargs
    ) -> None:
        super().__init__(image_processor, tokenizer, chat_template=chat_template or QWEN2_CHAT_TEMPLATE)

    def __call__(
        self,
        text: str | Sequence[str] | None = None,
        images: Image.Image | Sequence[Image.Image] | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Token ids (left/right padded as the tokenizer says) and the images, in prompt order.

        `images` lists every image of every prompt in order of their `<image>` markers; a count
        mismatch is an error rather than a silent misalignment.
        """
        if text is None:
            raise ValueError("IllumeProcessor needs text (a prompt containing one <image> per image)")
        if kwargs:
            raise TypeError(f"unsupported processor arguments: {sorted(kwargs)}")
        prompts = [text] if isinstance(text, str) else list(text)
        image_list = [] if images is None else ([images] if isinstance(images, Image.Image) else list(images))
        markers = sum(prompt.count(IMAGE_TOKEN) for prompt in prompts)
        if markers != len(image_list):
            raise ValueError(
                f"the prompts contain {markers} {IMAGE_TOKEN} markers but {len(image_list)} images were given"
            )
        sequences = [tokenizer_image_token(prompt, self.tokenizer) for prompt in prompts]
        data = self._pad(sequences)
        if image_list:
            data["images"] = self.image_processor(image_list)["images"]
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors must be 'pt' or None, got {return_tensors!r}")
        if return_tensors is None:
            data = {
                key: value.tolist() if isinstance(value, torch.Tensor) else value
                for key, value in data.items()
            }
        return BatchFeature(data)

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

    def batch_decode(self, *args, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs) -> str:
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "images"]
