"""What the demo's buttons do, independent of Gradio: validate, call `IllumePipeline`, shape results.

Every request carries its own state: the conversation lives in a `ChatSession` value owned by
the browser session (Gradio `State`), and each streamed answer comes from its own generator of
`IllumePipeline.stream_chat` — nothing is shared between requests except the loaded models.
Prompting, sampling and decoding are the pipeline's; this module only passes the user's
settings through.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from illume.serve.limits import InputError, InputLimits
from illume.vocab import RATIOS, RESOLUTION_TAG_SIZES

__all__ = ["AUTO_RESOLUTION", "RESOLUTIONS", "DECODER_CHOICES", "resolution_label", "model_resolutions", "default_size", "parse_resolution", "ChatSession", "DemoHandlers"]  # fmt: skip

# Output sizes offered for text-to-image with the released models: the 11 anchors they were trained
# on, plus 256x256 (fast; the SDXL decoder renders it at 512x512). Every one doubles to an SDXL
# decoder size.
RESOLUTIONS: tuple[tuple[int, int], ...] = ((256, 256), *RATIOS)
AUTO_RESOLUTION = "closest anchor"
DECODER_CHOICES = ("DualViTok", "SDXL (2x)")


def resolution_label(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def model_resolutions(max_pixels: int | None) -> tuple[tuple[int, int], ...]:
    """The sizes a model was trained for, from its checkpoint's image budget (`mm_vision_tower.max_pixels`).

    Training sets the budget to the images it sees (768x768 for the released models, 64x64 for the
    quick start's), so the sizes of `RESOLUTIONS` within it are offered; when none fits (a small
    model), the largest square with resolution tags within it.
    """
    if max_pixels is None:
        return RESOLUTIONS
    fits = tuple(size for size in RESOLUTIONS if size[0] * size[1] <= max_pixels)
    if fits:
        return fits
    squares = [(side, side) for side in RESOLUTION_TAG_SIZES if side * side <= max_pixels]
    return (max(squares),) if squares else (RESOLUTIONS[0],)


def default_size(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """512x512 when offered (the released models), else the largest size (e.g. 64x64 for the quick start)."""
    return (512, 512) if (512, 512) in sizes else max(sizes, key=lambda size: size[0] * size[1])


def parse_resolution(
    label: str, allow_auto: bool = False, sizes: Sequence[tuple[int, int]] = RESOLUTIONS
) -> tuple[int, int] | None:
    """'HxW' → (H, W) for one of `sizes`; `AUTO_RESOLUTION` → None where allowed."""
    if allow_auto and label == AUTO_RESOLUTION:
        return None
    for size in sizes:
        if resolution_label(size) == label:
            return size
    raise InputError(f"Unknown resolution {label!r}; choose one of {', '.join(map(resolution_label, sizes))}.")


@dataclass(frozen=True)
class ChatSession:
    """One browser session's conversation: model turns `(role, text[, images shown])`, images, display."""

    turns: tuple[tuple[str, str], ...] = ()
    images: tuple[Image.Image, ...] = ()
    display: tuple[dict[str, Any], ...] = field(default=())

    def messages(self) -> list[dict[str, Any]]:
        """The conversation in Gradio's chatbot message format."""
        return [dict(m) for m in self.display]


class DemoHandlers:
    """The demo's operations over one loaded `IllumePipeline`."""

    def __init__(self, pipe: Any, limits: InputLimits | None = None, speculative: str = "jacobi") -> None:
        self.pipe = pipe
        self.limits = limits or InputLimits()
        self.speculative = speculative  # the app's --speculative: how image tokens are decoded
        self.resolutions = model_resolutions(getattr(pipe, "max_pixels", None))

    @property
    def auto_resolution(self) -> bool:
        """Editing may pick the closest anchor only when the model was trained at the anchors."""
        return all(size in self.resolutions for size in RATIOS)

    def resolution_choices(self, include_auto: bool = False) -> list[str]:
        labels = [resolution_label(size) for size in self.resolutions]
        return [AUTO_RESOLUTION, *labels] if include_auto and self.auto_resolution else labels

    def default_resolution(self, include_auto: bool = False) -> str:
        """512x512 for the released models, else the model's largest size; editing: the closest anchor."""
        if include_auto and self.auto_resolution:
            return AUTO_RESOLUTION
        return resolution_label(default_size(self.resolutions))

    @property
    def has_sdxl(self) -> bool:
        return getattr(self.pipe, "sdxl_decoder", None) is not None

    # ------------------------------------------------------------------ chat
    def chat(
        self,
        session: ChatSession | None,
        message: str,
        image_path: str | None = None,
        *,
        max_new_tokens: int = 1024,
        temperature: float = 1.0,
        top_k: int = 128,
        top_p: float = 1.0,
        do_sample: bool = False,
        seed: int = 42,
    ) -> Iterator[ChatSession]:
        """Add the user's turn (and image), then yield the session as the answer streams in."""
        session = session or ChatSession()
        text = self.limits.check_prompt(message, "message")
        new_tokens = self.limits.check_new_tokens(max_new_tokens)
        temperature, top_k, top_p = self.limits.check_sampling(temperature, top_k, top_p)
        if len(session.turns) // 2 >= self.limits.max_turns_per_chat:
            raise InputError(
                f"This conversation reached {self.limits.max_turns_per_chat} turns; press Clear to start over."
            )
        images = session.images
        shown: list[dict[str, Any]] = []
        if image_path:
            if len(images) >= self.limits.max_images_per_chat:
                raise InputError(
                    f"At most {self.limits.max_images_per_chat} images per conversation; press Clear."
                )
            images = (*images, self.limits.load_image(image_path))
            shown.append({"role": "user", "content": {"path": str(image_path)}})
        shown.append({"role": "user", "content": message.strip()})
        turns = (*session.turns, ("user", text, 1) if image_path else ("user", text))
        answer = ""
        pieces = self.pipe.stream_chat(
            list(turns), list(images), max_new_tokens=new_tokens, temperature=float(temperature),
            top_k=int(top_k), top_p=float(top_p), do_sample=bool(do_sample), seed=int(seed),
        )  # fmt: skip
        # Until the answer is complete the session's model context stays as it was, so a failed
        # request leaves a conversation that can continue.
        yield replace(session, display=(*session.display, *shown, {"role": "assistant", "content": ""}))
        for piece in pieces:
            answer += piece
            yield replace(
                session, display=(*session.display, *shown, {"role": "assistant", "content": answer})
            )
        yield ChatSession((*turns, ("assistant", answer)), images,
                          (*session.display, *shown, {"role": "assistant", "content": answer}))  # fmt: skip

    # ------------------------------------------------------------------ images
    def _decoder(self, choice: str) -> str:
        if choice not in DECODER_CHOICES:
            raise InputError(f"Unknown decoder {choice!r}.")
        if choice == DECODER_CHOICES[1]:
            if not self.has_sdxl:
                raise InputError("The SDXL decoder is not loaded; start the demo with --sdxl-decoder DIR.")
            return "sdxl"
        return "dualvitok"

    def _image_settings(
        self,
        cfg_scale: float,
        temperature: float,
        top_k: int,
        top_p: float,
        seed: int,
        decoder: str,
        diffusion_cfg_scale: float,
        diffusion_steps: int,
        speculative: str | None,
    ) -> dict[str, Any]:
        """The checked sampling and decoding keywords of `generate` and `edit` (Gradio sends floats)."""
        temperature, top_k, top_p = self.limits.check_sampling(temperature, top_k, top_p)
        return dict(
            cfg_scale=float(cfg_scale), temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
            seed=int(seed), decoder=self._decoder(decoder), diffusion_cfg_scale=float(diffusion_cfg_scale),
            diffusion_steps=int(diffusion_steps), speculative=speculative or self.speculative,
        )  # fmt: skip

    def generate(
        self,
        prompt: str,
        resolution: str = "512x512",
        *,
        cfg_scale: float = 2.0,
        temperature: float = 1.0,
        top_k: int = 2048,
        top_p: float = 1.0,
        seed: int = 42,
        decoder: str = DECODER_CHOICES[0],
        diffusion_cfg_scale: float = 1.5,
        diffusion_steps: int = 20,
        speculative: str | None = None,
    ) -> Image.Image:
        """Text-to-image at one anchor resolution (twice that with the SDXL decoder)."""
        text = self.limits.check_prompt(prompt)
        size = parse_resolution(resolution, sizes=self.resolutions)
        settings = self._image_settings(cfg_scale, temperature, top_k, top_p, seed, decoder,
                                        diffusion_cfg_scale, diffusion_steps, speculative)  # fmt: skip
        return self.pipe.generate([text], resolution=size, **settings)[0]

    def edit(
        self,
        image_path: str | None,
        instruction: str,
        resolution: str = AUTO_RESOLUTION,
        *,
        cfg_scale: float = 1.5,
        temperature: float = 0.7,
        top_k: int = 512,
        top_p: float = 0.8,
        seed: int = 42,
        decoder: str = DECODER_CHOICES[0],
        diffusion_cfg_scale: float = 1.5,
        diffusion_steps: int = 20,
        speculative: str | None = None,
    ) -> Image.Image:
        """Edit the uploaded image by instruction; the result has the input's size."""
        image = self.limits.load_image(image_path)
        text = self.limits.check_prompt(instruction, "instruction")
        size = parse_resolution(resolution, allow_auto=self.auto_resolution, sizes=self.resolutions)
        settings = self._image_settings(cfg_scale, temperature, top_k, top_p, seed, decoder,
                                        diffusion_cfg_scale, diffusion_steps, speculative)  # fmt: skip
        return self.pipe.edit([image], [text], resolution=size, **settings)[0]

