"""`IllumePipeline`: understanding, text-to-image and editing with one loaded ILLUME+ model.

The pipeline owns prompting (formats.md §4), input preprocessing, the decoding engine and
tokens → pixels (DualViTok's decoder, or the SDXL diffusion decoder at twice the resolution).
The CLI, the demo, the notebook, the eval scripts and the lmms-eval plugin all call it.

Seeds: `seed` is an int (row i of a call uses `seed + i`) or one int per row; a row's output
depends only on its own seed, prompt and settings, not on the rest of the batch.

    pipe = IllumePipeline.from_pretrained("checkpoints/illume_plus-qwen2_5-3b", dualvitok="checkpoints/dualvitok")
    pipe.understand(load_image("cat.jpg"), "Describe the image.")          # -> ["A cat ..."]
    pipe.generate(["a cat with a hat", "a red car"], resolution=(512, 512))  # -> [PIL.Image, PIL.Image]
    pipe.edit(load_image("boots.jpg"), "Make the boots deep green.")        # -> [PIL.Image] at the input size
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoTokenizer
from vision_tokenizer.data.image_io import tensor_to_image

from illume.data.conversation import ASSISTANT, USER, get_template
from illume.inference.engine import GenerationEngine, PromptEmbeddings, RowSpec
from illume.inference.images import PaddedImage, pad_to_anchor, understanding_tensor, unpad_to_original
from illume.inference.offload import resident
from illume.inference.prompts import (
    EDITING,
    RANDOM_IMAGE,
    RECONSTRUCTION,
    TEXT_TO_IMAGE,
    generation_prompt,
    tokenize_prompt,
    understanding_message,
    user_message,
)
from illume.inference.sampling import SamplingConfig, row_keys
from illume.inference.validation import (
    ContextLimits,
    InvalidSetting,
    check_count,
    check_prompt_length,
    check_resolution,
    check_sampling,
    supported_resolutions,
)
from illume.model.configuration_illume import VisionTowerConfig
from illume.model.generation_defaults import GenerationDefaults
from illume.vocab import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, RATIOS, ImageGrid, ImageVocabulary

__all__ = ["ImageCodes", "ChatReply", "IllumePipeline", "resolve_dtype"]

DECODERS = ("dualvitok", "sdxl")
_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
_IMAGE_BLOCK = re.compile(r"(?:<height_\d+><width_\d+>)?<start_of_image>.*?<end_of_image>", re.S)
_OPEN_IMAGE = re.compile(r"(?:<height_\d+>(?:<width_\d+>)?)?(?:<start_of_image>.*)?$", re.S)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None` → bf16 on CUDA, fp32 elsewhere; strings 'fp32' / 'bf16' / 'fp16' (or full names)."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(_DTYPES)}") from None


@dataclass(frozen=True)
class ImageCodes:
    """One generated image as code grids: semantic (hs, ws), pixel (hp, wp), at `resolution` (H, W)."""

    semantic: torch.Tensor
    pixel: torch.Tensor
    resolution: tuple[int, int]


@dataclass
class ChatReply:
    """An interleaved answer: text (image blocks replaced by `<image>`) and the images' codes."""

    text: str
    images: list[ImageCodes]


def _as_list(value: Any, count: int | None, name: str) -> list:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if count is not None and len(items) == 1 and count > 1:
        items = items * count
    if count is not None and len(items) != count:
        raise ValueError(f"{name}: expected 1 or {count} values, got {len(items)}")
    return items


def _seeds(seed: int | Sequence[int], count: int) -> list[int]:
    if isinstance(seed, int):
        return [seed + i for i in range(count)]
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"seed: expected one int or {count} ints, got {len(seeds)}")
    return seeds


class IllumePipeline:
    """ILLUME+ inference. Build with `from_pretrained`, or from loaded parts.

    Args:
        model: an `IllumeQwen2ForCausalLM` (eval mode, on its device and dtype).
        tokenizer: the extended Qwen2.5 tokenizer.
        dualvitok: `DualViTok` used to turn generated codes into pixels (optional for understanding).
        sdxl_decoder: `DualViTokSDXLDecoderPipeline` for `decoder="sdxl"` (optional).
        template: conversation template name (`qwen2`).
        use_cuda_graphs: capture decode steps as CUDA graphs (default: on CUDA).
        offload: keep DualViTok and the SDXL decoder on the CPU except while they decode.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        dualvitok: torch.nn.Module | None = None,
        sdxl_decoder: Any = None,
        *,
        template: str = "qwen2",
        use_cuda_graphs: bool | None = None,
        offload: bool = False,
        generation_defaults: GenerationDefaults | None = None,
    ) -> None:
        self.model = model.eval()
        self.generation_defaults = generation_defaults or GenerationDefaults()
        self.offload = offload
        self.tokenizer = tokenizer
        self.vocab = ImageVocabulary.from_tokenizer(tokenizer)
        configured = getattr(model.config, "special_tokens_ids", None)
        if configured is not None and list(configured) != self.vocab.special_tokens_ids:
            raise ValueError(
                f"model config special_tokens_ids {list(configured)} differ from the tokenizer's "
                f"{self.vocab.special_tokens_ids}: model and tokenizer do not belong together"
            )
        self.dualvitok = dualvitok
        self.sdxl_decoder = sdxl_decoder
        self.template = get_template(template)
        eos = {self.vocab.end_of_text, self.vocab.pad}
        if tokenizer.eos_token_id is not None:
            eos.add(int(tokenizer.eos_token_id))
        self.engine = GenerationEngine(
            model, self.vocab, eos_ids=sorted(eos), use_cuda_graphs=use_cuda_graphs
        )
        self.last_forward_passes = 0
        tower = VisionTowerConfig.from_dict(getattr(model.config, "mm_vision_tower", None))
        self.min_pixels, self.max_pixels = tower.min_pixels, tower.max_pixels
        # `ImageVocabulary` holds every resolution tag, so the sizes are those of the tag table.
        self.resolutions = supported_resolutions()
        self.context = ContextLimits.from_config(model.config)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        mllm_path: str | os.PathLike,
        dualvitok: str | os.PathLike | torch.nn.Module | None = None,
        dualvitok_config: Any = None,
        sdxl_decoder: str | os.PathLike | Any = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        adapter: str | os.PathLike | None = None,
        quantize: str = "none",
        use_generation_config: bool = True,
        **kwargs: Any,
    ) -> IllumePipeline:
        """Load an origin-format MLLM folder (config, weights, tokenizer) and optional decoders.

        `dualvitok`: a DualViTok or its checkpoint (file or folder; `dualvitok_config` names its
        config when the checkpoint has none beside it). `sdxl_decoder`: a decoder pipeline or its
        folder. `device` defaults to CUDA when available; `dtype` to bf16 on CUDA, fp32 on CPU
        (the DualViTok decoder stays in fp32). `adapter`: a LoRA run's output folder, merged into
        the MLLM (which is then the run's base). `quantize`: "int8" / "fp8" weight-only
        quantization of the LLM layers (`inference.quantize`). With `offload=True` the decoders
        load on the CPU. `use_generation_config`: apply the folder's generation_config.json as HF
        `generate` would (`GenerationDefaults`). Other kwargs go to the pipeline constructor.
        """
        from illume.model import IllumeQwen2ForCausalLM

        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = resolve_dtype(dtype, device)
        path = Path(mllm_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no MLLM checkpoint at {path} (config.json missing)")
        model = IllumeQwen2ForCausalLM.from_pretrained(path, dtype=dtype)
        if adapter is not None:
            from illume.adapter import merge_adapter

            model = merge_adapter(model, adapter)
        model = model.to(device).eval()
        if quantize != "none":
            from illume.inference.quantize import quantize_llm

            quantize_llm(model, quantize)
        decoder_device = torch.device("cpu") if kwargs.get("offload") else device
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        if isinstance(dualvitok, (str, os.PathLike)):
            from vision_tokenizer.models.dualvitok import DualViTok

            dualvitok = DualViTok.from_pretrained(dualvitok, config=dualvitok_config, device=decoder_device)
        if isinstance(sdxl_decoder, (str, os.PathLike)):
            from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline

            if dualvitok is None:
                raise ValueError("the SDXL decoder needs the DualViTok: pass dualvitok= as well")
            sdxl_decoder = DualViTokSDXLDecoderPipeline.from_pretrained(sdxl_decoder, dualvitok=dualvitok).to(
                decoder_device
            )
        kwargs.setdefault("generation_defaults", GenerationDefaults.from_folder(path, use_generation_config))
        return cls(model, tokenizer, dualvitok, sdxl_decoder, **kwargs)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    # ------------------------------------------------------------------ prompt assembly
    def _prompt_embeddings(self, id_rows: list[list[int]], images: list[torch.Tensor]) -> PromptEmbeddings:
        """Left-pad ids (with -200 image markers) and embed them, images merged in marker order."""
        length = max(len(r) for r in id_rows)
        ids = torch.full((len(id_rows), length), self.vocab.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(id_rows):
            ids[r, length - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[r, length - len(row) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        with torch.no_grad():
            if not images:
                return PromptEmbeddings(self.model.get_input_embeddings()(ids), mask)
            dtype = self.model.get_input_embeddings().weight.dtype
            pixels = [img.to(device=self.device, dtype=dtype) for img in images]
            merged = self.model.get_model().prepare_multimodal_inputs(ids, mask, None, pixels)
        return _left_aligned(merged.inputs_embeds, merged.attention_mask)

    def _tokenize(self, prompt: str) -> list[int]:
        return tokenize_prompt(prompt, self.tokenizer)

    def _check_length(self, ids: list[int], images: Sequence[torch.Tensor], new_tokens: int) -> None:
        """The prompt with its input images' blocks must fit the model and leave `new_tokens`."""
        blocks = sum(ImageGrid.for_resolution(*image.shape[-2:]).num_tokens for image in images)
        check_prompt_length(len(ids) - ids.count(IMAGE_TOKEN_INDEX) + blocks, new_tokens, self.context)

    def _text_sampling(
        self,
        temperature: float | None,
        top_k: int | None,
        top_p: float | None,
        do_sample: bool | None,
        repetition_penalty: float | None = None,
    ) -> SamplingConfig:
        """Checked text sampling; knobs left None come from the checkpoint's generation_config.json
        (`GenerationDefaults`, as HF `generate` merges it), temperature 0 means greedy."""
        given = self.generation_defaults.resolve(
            temperature=temperature, top_k=top_k, top_p=top_p, do_sample=do_sample, repetition_penalty=repetition_penalty
        )
        knobs = check_sampling(given["temperature"], given["top_k"], given["top_p"])
        do_sample = given["do_sample"]
        if knobs["temperature"] == 0:
            knobs["temperature"], do_sample = 1.0, False
        return SamplingConfig.create(
            knobs["temperature"], knobs["top_k"], knobs["top_p"], do_sample=do_sample,
            repetition_penalty=given["repetition_penalty"],
        )  # fmt: skip

    # ------------------------------------------------------------------ understanding
    def stream_chat(
        self, messages: Sequence[tuple[str, str]], images: Sequence[Image.Image] = (), **options: Any
    ) -> Iterator[str]:
        """Stream the answer to a conversation `messages` [("user"|"assistant", text[, n_images]), ...].

        Texts are plain text (a typed `<image>` or `<|im_end|>` stays text); a turn's `n_images`
        (default 0) places the next that many of `images` before its text. Options (defaults):
        `max_new_tokens` 512, `temperature` 1.0, `top_k` 50, `top_p` 1.0, `do_sample` False
        (greedy), `seed` 42, `allow_images` False — when True the model may answer with image
        blocks (at `image_resolution` (512, 512) if it gives no resolution tag), shown as
        `<image>` in the text; `chat` returns their codes.
        """
        for piece, _ in self._chat_steps(messages, images, **options):
            if piece:
                yield piece

    def chat(
        self, messages: Sequence[tuple[str, str]], images: Sequence[Image.Image] = (), **options: Any
    ) -> ChatReply:
        """The whole answer of `stream_chat` (same options), with the codes of generated images."""
        text, generated = "", []
        for piece, ids in self._chat_steps(messages, images, **options):
            text, generated = text + piece, ids
        return ChatReply(text, self._codes_in(generated))

    def _chat_steps(
        self,
        messages: Sequence[tuple[str, str]],
        images: Sequence[Image.Image],
        *,
        max_new_tokens: int = 512,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        do_sample: bool | None = None,
        repetition_penalty: float | None = None,
        seed: int = 42,
        allow_images: bool = False,
        image_resolution: tuple[int, int] = (512, 512),
    ) -> Iterator[tuple[str, list[int]]]:
        sampling = self._text_sampling(temperature, top_k, top_p, do_sample, repetition_penalty)
        max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
        image_resolution = check_resolution(image_resolution, self.resolutions, "image_resolution")
        roles = {"user": USER, "assistant": ASSISTANT}
        turns = []
        for role, text, *shown in messages:
            if role not in roles:
                raise InvalidSetting(f"message role {role!r} is not 'user' or 'assistant'")
            turns.append((roles[role], understanding_message(text, *shown) if shown else text))
        prompt = self.template.render([*turns, (ASSISTANT, None)])
        ids = self._tokenize(prompt)
        markers = ids.count(IMAGE_TOKEN_INDEX)
        if markers != len(images):
            raise InvalidSetting(f"the conversation shows {markers} image(s) but {len(images)} were given")
        tensors = [understanding_tensor(img, self.min_pixels, self.max_pixels) for img in images]
        self._check_length(ids, tensors, max_new_tokens)
        embeds = self._prompt_embeddings([ids], tensors)
        spec = RowSpec(allow_images=allow_images, default_grid=ImageGrid.for_resolution(*image_resolution))
        keys = row_keys([torch.Generator().manual_seed(seed)])
        generated: list[int] = []
        shown = ""
        for tokens, _ in self.engine.stream(embeds, [spec], sampling, keys, max_new_tokens=max_new_tokens):
            generated.append(int(tokens[0]))
            # Trailing U+FFFD is usually a character whose bytes are still coming: hold it back.
            stable = self._reply_text(generated).rstrip("\ufffd")
            piece = stable[len(shown) :] if stable.startswith(shown) else ""
            shown += piece
            yield piece, generated
        text = self._reply_text(generated)
        yield (text[len(shown) :] if text.startswith(shown) else ""), generated

    def _reply_text(self, ids: list[int]) -> str:
        """Answer text; complete image blocks become `<image>`, an unfinished one is hidden."""
        text = self.tokenizer.decode([i for i in ids if i not in self.engine.eos], skip_special_tokens=True)
        text = _IMAGE_BLOCK.sub(IMAGE_TOKEN, text)
        return _OPEN_IMAGE.sub("", text, count=1)

    def _codes_in(self, ids: list[int]) -> list[ImageCodes]:
        found = []
        for semantic, pixel in self.vocab.extract_image_codes(ids):
            found.append(ImageCodes(semantic, pixel, (16 * pixel.shape[0], 16 * pixel.shape[1])))
        return found

    def stream_understand(self, image: Image.Image | None, question: str, **kwargs: Any) -> Iterator[str]:
        """Stream the answer to one question about one image (or none)."""
        images = [] if image is None else [image]
        yield from self.stream_chat([("user", question, len(images))], images, **kwargs)

    def understand(
        self,
        images: Image.Image | Sequence[Image.Image | Sequence[Image.Image] | None] | None,
        question: str | Sequence[str],
        *,
        max_new_tokens: int = 512,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        do_sample: bool | None = None,
        repetition_penalty: float | None = None,
        seed: int | Sequence[int] = 42,
    ) -> list[str]:
        """Answer questions about images, batched: one answer per row.

        `images`: one image, or one entry per row (an image, a list of images, or None);
        `question`: one string for every row, or one per row (plain text: the images go before it).
        Sampling knobs left None: the checkpoint's generation_config.json, else greedy (T 1.0,
        top-k 50, top-p 1.0); `repetition_penalty` likewise (else 1.0, off).
        """
        sampling = self._text_sampling(temperature, top_k, top_p, do_sample, repetition_penalty)
        max_new_tokens = check_count(max_new_tokens, "max_new_tokens")
        if isinstance(images, Image.Image) or images is None:
            images = [images]
        questions = [question] if isinstance(question, str) else list(question)
        count = max(len(images), len(questions))
        images = _as_list(images, count, "images")
        questions = _as_list(questions, count, "question")
        id_rows, tensors = [], []
        for item, text in zip(images, questions):
            row_images = [] if item is None else ([item] if isinstance(item, Image.Image) else list(item))
            message = understanding_message(text, len(row_images))
            id_rows.append(self._tokenize(self.template.generation_prompt(message)))
            row_tensors = [understanding_tensor(img, self.min_pixels, self.max_pixels) for img in row_images]
            self._check_length(id_rows[-1], row_tensors, max_new_tokens)
            tensors += row_tensors
        keys = row_keys([torch.Generator().manual_seed(s) for s in _seeds(seed, count)])
        out = self.engine.generate(
            self._prompt_embeddings(id_rows, tensors),
            [RowSpec()] * count,
            sampling,
            keys,
            max_new_tokens=max_new_tokens,
        )
        return [self._reply_text(ids) for ids in out]

    # ------------------------------------------------------------------ generation and editing
    def _sampling(
        self, cfg_scale: float, temperature: float, top_k: int, top_p: float, options: dict
    ) -> SamplingConfig:
        sampling = options.pop("sampling", None)
        if sampling is not None:
            if options:
                raise TypeError(f"pass either sampling= or sampling keywords, not both ({sorted(options)})")
            return sampling
        # The checkpoint's repetition penalty applies to image codes too, as in HF `generate`.
        penalty = self.generation_defaults.resolve(repetition_penalty=options.get("repetition_penalty"))
        options["repetition_penalty"] = penalty["repetition_penalty"]
        knobs = check_sampling(temperature, top_k, top_p, options)
        if knobs["temperature"] == 0:
            knobs["temperature"], options["do_sample"] = 1.0, False
        return SamplingConfig.create(**{**options, **knobs}, cfg_scale=cfg_scale)

    def _generate_rows(
        self,
        cond: list[list[int]],
        uncond: list[list[int]],
        images: list[torch.Tensor],
        grids: list[ImageGrid],
        sampling: SamplingConfig,
        seeds: list[int],
        batch_size: int,
        progress: bool,
        speculative: str,
    ) -> list[ImageCodes]:
        """Decode image rows in chunks of `batch_size` (images: one per row, or none).

        `self.last_forward_passes` is set to the model forwards the call took.
        """
        results: list[ImageCodes] = []
        starts = range(0, len(cond), batch_size)
        total = sum(max(g.num_tokens for g in grids[start : start + batch_size]) for start in starts)
        bar = tqdm(total=total, desc="decoding", unit="tok", disable=not progress)
        passes_before = self.engine.forward_passes
        for start in starts:
            rows = range(start, min(start + batch_size, len(cond)))
            id_rows = [cond[r] for r in rows]
            row_images = [images[r] for r in rows] if images else []
            if sampling.uses_cfg:
                id_rows += [uncond[r] for r in rows]
                row_images = row_images * 2
            keys = row_keys([torch.Generator().manual_seed(seeds[r]) for r in rows])
            out = self.engine.generate(
                self._prompt_embeddings(id_rows, row_images),
                [RowSpec(image=grids[r]) for r in rows],
                sampling,
                keys,
                on_step=bar.update,
                speculative=speculative,
            )
            for r, ids in zip(rows, out):
                semantic, pixel = self.vocab.parse_image_block(ids, grids[r])
                results.append(ImageCodes(semantic, pixel, (16 * grids[r].pixel[0], 16 * grids[r].pixel[1])))
        bar.close()
        self.last_forward_passes = self.engine.forward_passes - passes_before
        return results

    def generate_codes(
        self,
        prompts: str | Sequence[str],
        *,
        resolution: tuple[int, int] | Sequence[tuple[int, int]] = (512, 512),
        cfg_scale: float = 2.0,
        temperature: float = 1.0,
        top_k: int = 2048,
        top_p: float = 1.0,
        seed: int | Sequence[int] = 42,
        batch_size: int = 16,
        template: str = TEXT_TO_IMAGE,
        progress: bool = False,
        speculative: str = "jacobi",
        **sampling_options: Any,
    ) -> list[ImageCodes]:
        """Text-to-image as code grids. `resolution` (H, W) for all prompts or one per prompt.

        `speculative`: "jacobi" (default: exact speculative Jacobi decoding, fewer forwards) or
        "none" (one forward per code). `sampling_options`: `semantic_{temperature,top_k,top_p}`,
        `pixel_{...}`, `do_sample`, `official_double_sampling`, or a whole `sampling=SamplingConfig`.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise InvalidSetting("no prompts: give at least one caption")
        sizes = _as_list(
            [resolution] if isinstance(resolution[0], int) else resolution, len(prompts), "resolution"
        )
        sizes = [check_resolution(size, self.resolutions) for size in sizes]
        batch_size = check_count(batch_size, "batch_size")
        sampling = self._sampling(cfg_scale, temperature, top_k, top_p, sampling_options)
        cond, uncond, grids = [], [], []
        for text, (h, w) in zip(prompts, sizes):
            grids.append(ImageGrid.for_resolution(h, w))
            cond.append(
                self._tokenize(generation_prompt(user_message(template, h, w, text), h, w, self.template))
            )
            uncond.append(
                self._tokenize(generation_prompt(user_message(RANDOM_IMAGE, h, w), h, w, self.template))
            )
            self._check_length(cond[-1], [], grids[-1].num_tokens)
        return self._generate_rows(
            cond, uncond, [], grids, sampling, _seeds(seed, len(prompts)), batch_size, progress, speculative
        )

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        decoder: str = "dualvitok",
        diffusion_cfg_scale: float = 1.5,
        diffusion_steps: int = 50,
        seed: int | Sequence[int] = 42,
        **options: Any,
    ) -> list[Image.Image]:
        """Text-to-image: PIL images at `resolution` (DualViTok) or twice it (`decoder="sdxl"`).

        Defaults follow the official recommendation: T 1.0, top-k 2048 (pixel 3×), top-p 1.0,
        LLM CFG 2.0. See `generate_codes` for the other options.
        """
        codes = self.generate_codes(prompts, seed=seed, **options)
        return self.decode(
            codes,
            decoder=decoder,
            diffusion_cfg_scale=diffusion_cfg_scale,
            diffusion_steps=diffusion_steps,
            seed=seed,
        )

    def edit_codes(
        self,
        images: Image.Image | Sequence[Image.Image],
        instructions: str | Sequence[str],
        *,
        resolution: tuple[int, int] | None = None,
        cfg_scale: float = 1.5,
        temperature: float = 0.7,
        top_k: int = 512,
        top_p: float = 0.8,
        seed: int | Sequence[int] = 42,
        batch_size: int = 16,
        template: str = EDITING,
        anchors: Sequence[tuple[int, int]] = RATIOS,
        progress: bool = False,
        speculative: str = "jacobi",
        **sampling_options: Any,
    ) -> tuple[list[ImageCodes], list[PaddedImage]]:
        """Editing as code grids, plus how each input was padded (for `unpad_to_original`).

        Each input is padded with white to its closest anchor (or to `resolution`), which is
        also the output resolution; the unconditional prompt reconstructs the same input.
        """
        images = [images] if isinstance(images, Image.Image) else list(images)
        instructions = [instructions] if isinstance(instructions, str) else list(instructions)
        count = max(len(images), len(instructions))
        if not images:
            raise InvalidSetting("no images to edit: give at least one")
        images = _as_list(images, count, "images")
        instructions = _as_list(instructions, count, "instructions")
        if resolution is not None:
            resolution = check_resolution(resolution, self.resolutions)
        anchors = [check_resolution(anchor, self.resolutions, "anchor") for anchor in anchors]
        batch_size = check_count(batch_size, "batch_size")
        sampling = self._sampling(cfg_scale, temperature, top_k, top_p, sampling_options)
        cond, uncond, grids, tensors, padded = [], [], [], [], []
        for image, text in zip(images, instructions):
            placed = pad_to_anchor(image, anchors, resolution)
            h, w = placed.anchor
            padded.append(placed)
            grids.append(ImageGrid.for_resolution(h, w))
            tensors.append(understanding_tensor(placed.image, self.min_pixels, self.max_pixels))
            cond.append(
                self._tokenize(generation_prompt(user_message(template, h, w, text), h, w, self.template))
            )
            uncond.append(
                self._tokenize(generation_prompt(user_message(RECONSTRUCTION, h, w), h, w, self.template))
            )
            self._check_length(cond[-1], tensors[-1:], grids[-1].num_tokens)
        codes = self._generate_rows(
            cond, uncond, tensors, grids, sampling, _seeds(seed, count), batch_size, progress, speculative
        )
        return codes, padded

    def edit(
        self,
        images: Image.Image | Sequence[Image.Image],
        instructions: str | Sequence[str],
        *,
        decoder: str = "dualvitok",
        diffusion_cfg_scale: float = 1.5,
        diffusion_steps: int = 50,
        seed: int | Sequence[int] = 42,
        unpad: bool = True,
        **options: Any,
    ) -> list[Image.Image]:
        """Edit images by instruction; outputs are mapped back to each input's size unless `unpad=False`.

        Defaults follow the official editing recipe: T 0.7, top-k 512, top-p 0.8, LLM CFG 1.5.
        """
        codes, padded = self.edit_codes(images, instructions, seed=seed, **options)
        outputs = self.decode(
            codes,
            decoder=decoder,
            diffusion_cfg_scale=diffusion_cfg_scale,
            diffusion_steps=diffusion_steps,
            seed=seed,
        )
        return [unpad_to_original(out, pad) for out, pad in zip(outputs, padded)] if unpad else outputs

    # ------------------------------------------------------------------ codes → pixels
    @torch.no_grad()
    def decode(
        self,
        codes: Sequence[ImageCodes],
        *,
        decoder: str = "dualvitok",
        diffusion_cfg_scale: float = 1.5,
        diffusion_steps: int = 50,
        seed: int | Sequence[int] = 42,
    ) -> list[Image.Image]:
        """Images from code grids: DualViTok at the token resolution, SDXL at twice it."""
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder == "sdxl" and self.sdxl_decoder is None:
            raise ValueError(
                "decoder='sdxl' needs the SDXL decoder: load the pipeline with sdxl_decoder=<folder>"
            )
        if self.dualvitok is None:
            raise ValueError(
                "decoding images needs the DualViTok: load the pipeline with dualvitok=<checkpoint>"
            )
        seeds = _seeds(seed, len(codes))
        out: list[Image.Image | None] = [None] * len(codes)
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(codes):
            groups.setdefault((tuple(c.semantic.shape), tuple(c.pixel.shape)), []).append(i)
        used = self.dualvitok if decoder == "dualvitok" else self.sdxl_decoder
        with resident(used, self.device, self.offload):
            self._decode_groups(codes, groups, decoder, diffusion_cfg_scale, diffusion_steps, seeds, out)
        return out

    def _decode_groups(
        self,
        codes: Sequence[ImageCodes],
        groups: dict[tuple, list[int]],
        decoder: str,
        diffusion_cfg_scale: float,
        diffusion_steps: int,
        seeds: list[int],
        out: list[Image.Image | None],
    ) -> None:
        """Decode each group of same-shaped codes in one batch into `out`."""
        device = (self.dualvitok if decoder == "dualvitok" else self.sdxl_decoder).device
        for members in groups.values():
            semantic = torch.stack([codes[i].semantic for i in members]).to(device)
            pixel = torch.stack([codes[i].pixel for i in members]).to(device)
            if decoder == "dualvitok":
                pixels = self.dualvitok.decode_code(semantic, pixel)
                images = [tensor_to_image(p) for p in pixels]
            else:
                generators = [
                    torch.Generator(self.sdxl_decoder.device).manual_seed(seeds[i]) for i in members
                ]
                images = self.sdxl_decoder(
                    vq_indices=(semantic, pixel),
                    guidance_scale=diffusion_cfg_scale,
                    num_inference_steps=diffusion_steps,
                    generator=generators,
                ).images
            for i, image in zip(members, images):
                out[i] = image


def _left_aligned(embeds: torch.Tensor, mask: torch.Tensor) -> PromptEmbeddings:
    """Move right-padded rows' tokens to the right end (the engine decodes after the last column)."""
    mask = mask.long()
    if bool(mask[:, -1].all()):
        return PromptEmbeddings(embeds, mask)
    length = mask.shape[1]
    shift = length - mask.sum(-1)
    index = (torch.arange(length, device=mask.device)[None] - shift[:, None]) % length
    return PromptEmbeddings(embeds.gather(1, index[..., None].expand_as(embeds)), mask.gather(1, index))
