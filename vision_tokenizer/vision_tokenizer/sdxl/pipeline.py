"""`DualViTokSDXLDecoderPipeline`: DualViTok codes -> image at twice the token resolution.

A diffusers pipeline over the released `dualvitok-sdxl-decoder` folder (`model_index.json`,
`unet/`, `vae/`, `scheduler/`). The UNet is SDXL's with `conv_in` widened to take the merged
DualViTok code map next to the latents (see `conditioning.py`); guidance contrasts the code map
with an all-zero one. The DualViTok itself is an optional registered component: `.to(device)` and
CPU offload move it, but the pipeline never changes its dtype, because the same tokenizer object
is usually shared with other pipelines.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import (
    rescale_noise_cfg,
    retrieve_timesteps,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from .conditioning import (
    check_decoder_unet,
    code_map_from_images,
    code_map_from_indices,
    module_device,
    pooled_text_dim,
    resize_to_latent_grid,
    zero_text_conditioning,
)
from .latents import denormalize_latents
from .resolutions import resolution_index

__all__ = ["DualViTokSDXLDecoderPipeline", "DualViTokSDXLDecoderPipelineOutput"]

_OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Tokenizer pixel grid stride (16) times the 2x decoder upscale.
_PIXELS_PER_CODE = 32


@dataclass
class DualViTokSDXLDecoderPipelineOutput(BaseOutput):
    """Decoded images (PIL list, [B,H,W,3] array, [B,3,H,W] tensor or latents) and the codes used."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    indices_semantic: torch.Tensor | None = None
    indices_pixel: torch.Tensor | None = None


class DualViTokSDXLDecoderPipeline(DiffusionPipeline):
    """SDXL decoder for DualViTok codes (or images, tokenized on the fly by `dualvitok`).

    Load with `from_pretrained(decoder_dir, dualvitok=model_or_checkpoint_path)`; the folder
    layout is the released one. Output sizes are restricted to `resolutions.DECODER_SIZES`.
    """

    model_cpu_offload_seq = "dualvitok->unet->vae"
    _optional_components = ["dualvitok"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        dualvitok: nn.Module | None = None,
    ):
        super().__init__()
        pooled_text_dim(unet.config)
        self.register_modules(vae=vae, unet=unet, scheduler=scheduler, dualvitok=dualvitok)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    # ------------------------------------------------------------------ loading, saving, placement

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        dualvitok: nn.Module | str | os.PathLike | None = None,
        dualvitok_config: Any = None,
        **kwargs: Any,
    ) -> DualViTokSDXLDecoderPipeline:
        """Load a decoder folder; `dualvitok` is a model or a tokenizer checkpoint path.

        Only local files are read unless the caller passes `local_files_only=False`. A DualViTok
        given as a path is loaded with `DualViTok.from_pretrained(path, config=dualvitok_config)`.
        """
        if isinstance(dualvitok, (str, os.PathLike)):
            from vision_tokenizer.models.dualvitok import DualViTok

            dualvitok = DualViTok.from_pretrained(dualvitok, config=dualvitok_config)
        kwargs.setdefault("local_files_only", True)
        return super().from_pretrained(pretrained_model_name_or_path, dualvitok=dualvitok, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Write the decoder folder (vae, unet, scheduler); the tokenizer has its own checkpoint."""
        registered = self.config.get("dualvitok", (None, None))
        self.register_to_config(dualvitok=(None, None))
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_to_config(dualvitok=registered)

    @contextlib.contextmanager
    def _dualvitok_detached(self) -> Iterator[nn.Module | None]:
        """Hide the DualViTok from the base class, which would also cast it to a new dtype."""
        model = self.__dict__.get("dualvitok")
        object.__setattr__(self, "dualvitok", None)
        try:
            yield model
        finally:
            object.__setattr__(self, "dualvitok", model)

    def to(self, *args: Any, **kwargs: Any) -> DualViTokSDXLDecoderPipeline:
        """`DiffusionPipeline.to` for vae and unet; the DualViTok follows the device only."""
        device = kwargs.get("device")
        for arg in args:
            if arg is not None and not isinstance(arg, torch.dtype):
                device = arg
        with self._dualvitok_detached() as model:
            super().to(*args, **kwargs)
        if model is not None and device is not None:
            model.to(device=device)
        return self

    @property
    def device(self) -> torch.device:
        """The accelerator a component sits on, else CPU (plain nn.Modules have no `.device`)."""
        devices = [module_device(m) for m in (self.unet, self.vae, self.dualvitok) if m is not None]
        return next((d for d in devices if d.type not in ("cpu", "meta")), devices[0])

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's dtype: latents and conditioning are built in it."""
        return self.unet.dtype

    # ------------------------------------------------------------------ steps of __call__

    def check_sources(self, vq_indices: Sequence[torch.Tensor] | None, images: torch.Tensor | None) -> None:
        """Exactly one conditioning source, of the right kind, and a tokenizer to read it."""
        if (vq_indices is None) == (images is None):
            raise ValueError("pass exactly one of `vq_indices` (semantic, pixel) or `images`")
        if vq_indices is not None and (
            not isinstance(vq_indices, (tuple, list))
            or len(vq_indices) != 2
            or not all(isinstance(t, torch.Tensor) and t.ndim == 3 for t in vq_indices)
        ):
            raise ValueError("`vq_indices` must be a pair (indices_semantic [B,hs,ws], indices_pixel [B,hp,wp])")
        if images is not None and not (isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3):
            raise ValueError("`images` must be a [B, 3, H, W] tensor in [-1, 1]")
        if self.dualvitok is None:
            raise ValueError(
                "this pipeline has no `dualvitok`: pass `dualvitok=` to from_pretrained or set `pipe.dualvitok`"
            )

    def default_size(
        self, vq_indices: Sequence[torch.Tensor] | None, images: torch.Tensor | None
    ) -> tuple[int, int]:
        """(height, width) twice the tokenizer resolution of the given codes or images."""
        if images is not None:
            return 2 * images.shape[-2], 2 * images.shape[-1]
        grid_h, grid_w = vq_indices[1].shape[-2:]
        return _PIXELS_PER_CODE * grid_h, _PIXELS_PER_CODE * grid_w

    def check_inputs(
        self, height: int, width: int, output_type: str, callback_on_step_end_tensor_inputs: Sequence[str]
    ) -> None:
        """Reject bad settings before any model runs, naming the argument."""
        resolution_index(height, width)
        if output_type not in _OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {_OUTPUT_TYPES}; got {output_type!r}")
        unknown = [name for name in callback_on_step_end_tensor_inputs if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` {unknown} are not among {self._callback_tensor_inputs}"
            )

    def encode_condition(
        self, vq_indices: Sequence[torch.Tensor] | None, images: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(merged code map, semantic indices, pixel indices) from codes or from images."""
        hook = getattr(self.dualvitok, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward"):
            hook.pre_forward(self.dualvitok)  # CPU offload: bring the tokenizer to the accelerator
        if images is not None:
            return code_map_from_images(self.dualvitok, images)
        indices_semantic, indices_pixel = vq_indices
        return code_map_from_indices(self.dualvitok, indices_semantic, indices_pixel), None, None

    def prepare_latents(
        self,
        batch_size: int,
        latent_size: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Initial noise (from `generator`, or the caller's `latents`) scaled for the scheduler."""
        shape = (batch_size, self.vae.config.latent_channels, *latent_size)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}; got {tuple(latents.shape)}")
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def _scheduler_step_kwargs(self, generator: Any, eta: float) -> dict[str, Any]:
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    def decode_latents(self, latents: torch.Tensor, output_type: str) -> Any:
        """Normalised latents -> images of `output_type` (the VAE runs in fp32 if fp16 overflows)."""
        if output_type == "latent":
            return latents
        raw = denormalize_latents(self.vae, latents.float())
        upcast = self.vae.dtype == torch.float16 and getattr(self.vae.config, "force_upcast", False)
        if upcast:
            self.vae.to(torch.float32)
        try:
            image = self.vae.decode(raw.to(self.vae.dtype), return_dict=False)[0]
        finally:
            if upcast:
                self.vae.to(torch.float16)
        return self.image_processor.postprocess(image.float(), output_type=output_type)

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def __call__(
        self,
        vq_indices: Sequence[torch.Tensor] | None = None,
        images: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 2.0,
        guidance_rescale: float = 0.0,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[..., dict[str, torch.Tensor]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> DualViTokSDXLDecoderPipelineOutput | tuple:
        """Decode DualViTok codes (or tokenize and decode images) at one of the 12 decoder sizes.

        Args:
            vq_indices: (semantic [B, hs, ws], pixel [B, hp, wp]) code indices.
            images: alternatively [B, 3, H, W] images in [-1, 1], tokenized by `dualvitok`.
            height, width: output size; default twice the tokenizer resolution. Must be one of
                `resolutions.DECODER_SIZES` (checked before anything runs).
            num_inference_steps, timesteps, sigmas: denoising schedule (diffusers `retrieve_timesteps`).
            guidance_scale: guidance against an all-zero code map; active when > 1 (default 2.0).
            guidance_rescale: std rescaling of the guided prediction (0 = off).
            eta, generator, latents: sampling randomness; `generator` may be one per image.
            output_type: "pil" (default), "np", "pt" or "latent".
            callback_on_step_end: `f(pipe, step, timestep, tensors) -> dict` may replace `latents`.

        Returns:
            `DualViTokSDXLDecoderPipelineOutput` (or a tuple `(images, indices_semantic, indices_pixel)`);
            the indices are filled when `images` were tokenized.
        """
        self.check_sources(vq_indices, images)
        if height is None or width is None:
            default_h, default_w = self.default_size(vq_indices, images)
            height, width = height or default_h, width or default_w
        self.check_inputs(height, width, output_type, callback_on_step_end_tensor_inputs)
        size_index = resolution_index(height, width)
        device = self._execution_device
        dtype = self.unet.dtype
        latent_size = (height // self.vae_scale_factor, width // self.vae_scale_factor)

        code_map, indices_semantic, indices_pixel = self.encode_condition(vq_indices, images)
        check_decoder_unet(self.unet, self.vae.config.latent_channels, code_map.shape[1])
        batch_size = code_map.shape[0]
        code_map = resize_to_latent_grid(code_map.to(device=device, dtype=dtype), latent_size)
        guided = guidance_scale > 1.0
        if guided:
            code_map = torch.cat([torch.zeros_like(code_map), code_map])
        text_states, added_cond = zero_text_conditioning(
            self.unet.config, code_map.shape[0], size_index, device, dtype
        )

        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        latents = self.prepare_latents(batch_size, latent_size, dtype, device, generator, latents)
        step_kwargs = self._scheduler_step_kwargs(generator, eta)

        with self.progress_bar(total=len(timesteps)) as progress:
            for step, timestep in enumerate(timesteps):
                model_input = torch.cat([latents, latents]) if guided else latents
                model_input = self.scheduler.scale_model_input(model_input, timestep)
                prediction = self.unet(
                    torch.cat([model_input, code_map], dim=1),
                    timestep,
                    encoder_hidden_states=text_states,
                    added_cond_kwargs=added_cond,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
                if guided:
                    unconditional, conditional = prediction.chunk(2)
                    prediction = unconditional + guidance_scale * (conditional - unconditional)
                    if guidance_rescale > 0.0:
                        prediction = rescale_noise_cfg(prediction, conditional, guidance_rescale=guidance_rescale)
                latents = self.scheduler.step(prediction, timestep, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    available = {"latents": latents}
                    tensors = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    latents = callback_on_step_end(self, step, timestep, tensors).get("latents", latents)
                progress.update()

        image = self.decode_latents(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return image, indices_semantic, indices_pixel
        return DualViTokSDXLDecoderPipelineOutput(
            images=image, indices_semantic=indices_semantic, indices_pixel=indices_pixel
        )
