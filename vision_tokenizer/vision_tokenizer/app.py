"""Gradio demo of the DualViTok tokenizer: reconstruct an image, show its codes, compare decoders.

    python -m vision_tokenizer.app --config CONFIG [--checkpoint CKPT] [--sdxl-decoder DIR]

Models are loaded once in `main()`; every request works on its own tensors, and the queue runs
one reconstruction at a time (the models are shared, not their inputs or outputs). Uploads are
bounded by file size (Gradio rejects larger files), pixel count (checked from the header before
decoding) and a short-side limit; violations come back as a message in the page, not a crash.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vision_tokenizer.data.image_io import ImageLoadError, image_to_tensor, load_image, psnr, tensor_to_image
from vision_tokenizer.job_args import add_option
from vision_tokenizer.models.dualvitok import DualViTok
from vision_tokenizer.utils.user_errors import OneLineErrorParser, require_path, run_cli

__all__ = ["TokenizerDemo", "Reconstruction", "SHORT_SIDE_CHOICES", "build_demo", "main"]

SHORT_SIDE_CHOICES = ("None", "256", "384", "512", "1024")
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "assets" / "examples"
DEFAULT_MAX_UPLOAD_PIXELS = 4096 * 4096
DEFAULT_MAX_FILE_SIZE = "20mb"
# Largest tensor handed to the tokenizer (the released model was trained up to 512x512).
_MAX_MODEL_PIXELS = 1024 * 1024


@dataclass
class Reconstruction:
    """Everything one request shows: input as tokenized, both reconstructions, codes, PSNRs."""

    tokenized: Image.Image
    dualvitok: Image.Image
    sdxl: Image.Image | None
    semantic_codes: np.ndarray
    pixel_codes: np.ndarray
    psnr_dualvitok: float

    def summary(self) -> str:
        (hs, ws), (hp, wp) = self.semantic_codes.shape, self.pixel_codes.shape
        lines = [
            f"input tokenized at {self.tokenized.height}x{self.tokenized.width}",
            f"semantic codes (level 0): {hs}x{ws} = {hs * ws}, {len(np.unique(self.semantic_codes))} distinct",
            f"pixel codes (level 1): {hp}x{wp} = {hp * wp}, {len(np.unique(self.pixel_codes))} distinct",
            f"DualViTok reconstruction PSNR: {self.psnr_dualvitok:.2f} dB",
        ]
        if self.sdxl is not None:
            lines.append(f"SDXL decoder output: {self.sdxl.height}x{self.sdxl.width}")
        return "\n".join(f"- {line}" for line in lines)


def codes_text(codes: np.ndarray) -> str:
    """A code grid as rows of numbers (what the MLLM sees as tokens, minus the markers)."""
    return "\n".join(" ".join(str(int(c)) for c in row) for row in codes)


def codes_picture(codes: np.ndarray, cell: int = 8) -> Image.Image:
    """A code grid as colours (a fixed pseudo-random colour per code) to see structure at a glance."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, size=(int(codes.max()) + 1, 3), dtype=np.uint8)
    picture = palette[codes].repeat(cell, axis=0).repeat(cell, axis=1)
    return Image.fromarray(picture)


def resize_short_side(image: Image.Image, short_side: int | None, force_upscale: bool) -> Image.Image:
    """Scale so the short side is `short_side` when it is longer (or always, with `force_upscale`)."""
    if short_side is None:
        return image
    current = min(image.size)
    if current == short_side or (current < short_side and not force_upscale):
        return image
    scale = short_side / current
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


class TokenizerDemo:
    """The models behind the page and the one operation it offers."""

    def __init__(
        self,
        model: DualViTok,
        sdxl_decoder=None,
        max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
    ) -> None:
        self.model = model.eval()
        self.sdxl_decoder = sdxl_decoder
        self.max_upload_pixels = max_upload_pixels

    @torch.no_grad()
    def reconstruct(
        self,
        image_path: str | os.PathLike,
        short_side: int | None = None,
        force_upscale: bool = False,
        use_sdxl: bool = False,
        sdxl_guidance: float = 1.5,
        sdxl_steps: int = 20,
        seed: int = 0,
    ) -> Reconstruction:
        """Tokenize the image at `image_path`, decode with DualViTok and optionally the SDXL decoder."""
        image = resize_short_side(
            load_image(image_path, max_pixels=self.max_upload_pixels), short_side, force_upscale
        )
        tensor = image_to_tensor(image, max_pixels=_MAX_MODEL_PIXELS).to(self.model.device)
        semantic, pixel = self.model.encode_code(tensor)
        reconstruction = tensor_to_image(self.model.decode_code(semantic, pixel))
        tokenized = tensor_to_image(tensor)
        sdxl = None
        if use_sdxl:
            if self.sdxl_decoder is None:
                raise ValueError("no SDXL decoder was loaded; start the app with --sdxl-decoder DIR")
            from vision_tokenizer.sdxl import nearest_decoder_size

            width, height = nearest_decoder_size(2 * tensor.shape[-2], 2 * tensor.shape[-1])
            generator = torch.Generator(device="cpu").manual_seed(int(seed))
            sdxl = self.sdxl_decoder(
                vq_indices=(semantic, pixel),
                height=height,
                width=width,
                guidance_scale=float(sdxl_guidance),
                num_inference_steps=int(sdxl_steps),
                generator=generator,
            ).images[0]
        return Reconstruction(
            tokenized=tokenized,
            dualvitok=reconstruction,
            sdxl=sdxl,
            semantic_codes=semantic[0].cpu().numpy(),
            pixel_codes=pixel[0].cpu().numpy(),
            psnr_dualvitok=psnr(tokenized, reconstruction),
        )


def build_demo(demo: TokenizerDemo):
    """The Gradio page for `demo` (nothing is loaded here)."""
    import gradio as gr

    def run(image_path, short_side, force_upscale, use_sdxl, guidance, steps, seed):
        if not image_path:
            raise gr.Error("Upload an image first.")
        try:
            result = demo.reconstruct(
                image_path,
                None if short_side == "None" else int(short_side),
                bool(force_upscale),
                bool(use_sdxl),
                float(guidance),
                int(steps),
                int(seed),
            )
        except (ImageLoadError, ValueError) as err:
            raise gr.Error(str(err)) from None
        return (
            result.dualvitok,
            result.sdxl,
            result.summary(),
            codes_picture(result.semantic_codes),
            codes_picture(result.pixel_codes),
            codes_text(result.semantic_codes),
        )

    with gr.Blocks(title="DualViTok tokenizer") as page:
        gr.Markdown("# DualViTok\nReconstruct an image through the semantic and pixel codebooks.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Input image", elem_id="input-image")
                short_side = gr.Dropdown(list(SHORT_SIDE_CHOICES), value="512", label="Max shortest side")
                force_upscale = gr.Checkbox(False, label="Force upscale to the shortest side")
                with gr.Accordion("SDXL decoder", open=False):
                    use_sdxl = gr.Checkbox(
                        False,
                        label="Also decode with the SDXL decoder (2x)",
                        interactive=demo.sdxl_decoder is not None,
                    )
                    guidance = gr.Slider(1.0, 10.0, value=1.5, step=0.5, label="Guidance scale")
                    steps = gr.Slider(1, 100, value=20, step=1, label="Steps")
                    seed = gr.Number(0, precision=0, label="Seed")
                button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
                if EXAMPLES_DIR.is_dir():
                    gr.Examples(sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg")), inputs=[image])
            with gr.Column():
                with gr.Row():
                    out_vq = gr.Image(label="DualViTok decoder", elem_id="dualvitok-output")
                    out_sdxl = gr.Image(label="SDXL decoder", elem_id="sdxl-output")
                summary = gr.Markdown(elem_id="summary")
                with gr.Row():
                    semantic_map = gr.Image(label="Semantic codes", elem_id="semantic-codes")
                    pixel_map = gr.Image(label="Pixel codes", elem_id="pixel-codes")
                semantic_text = gr.Textbox(label="Semantic code grid", lines=6, max_lines=12)
        button.click(
            run,
            [image, short_side, force_upscale, use_sdxl, guidance, steps, seed],
            [out_vq, out_sdxl, summary, semantic_map, pixel_map, semantic_text],
        )
    return page


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="python -m vision_tokenizer.app", description=__doc__.splitlines()[0])
    add_option(parser, "--config", "--dualvitok-config", "--model_config", dest="config", required=True,
               help="DualViTok config (.py/.json) or a save_pretrained folder")
    add_option(parser, "--dualvitok", "--checkpoint", "--vq-ckpt", "--tokenizer_checkpoint", dest="checkpoint",
               default=None, help="tokenizer weights (file or folder); random init without")
    add_option(parser, "--use-ema", "--use_ema", dest="use_ema", action="store_true",
               help="load the EMA weights of a training checkpoint")
    add_option(parser, "--sdxl-decoder", "--diffusion_decoder_path", dest="sdxl_decoder", default=None,
               help="SDXL decoder folder (enables the second decoder)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for all interfaces)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="largest upload, e.g. 20mb")
    parser.add_argument("--max-upload-pixels", type=int, default=DEFAULT_MAX_UPLOAD_PIXELS)
    parser.add_argument(
        "--queue-size", type=int, default=16, help="requests waiting before new ones are refused"
    )
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    return parser.parse_args(argv)


def _serve(argv: Sequence[str]) -> None:
    args = _parse_args(argv)
    config = Path(args.config)
    require_path(config, "--config")
    if args.checkpoint is not None:
        require_path(args.checkpoint, "--dualvitok")
    if args.checkpoint is None and config.is_dir():
        model = DualViTok.from_pretrained(config, use_ema=args.use_ema)
    elif args.checkpoint is None:
        model = DualViTok.from_config(config)
    else:
        model = DualViTok.from_pretrained(args.checkpoint, use_ema=args.use_ema, config=config)
    model = model.to(args.device).eval()
    decoder = None
    if args.sdxl_decoder:
        from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline

        decoder = DualViTokSDXLDecoderPipeline.from_pretrained(args.sdxl_decoder, dualvitok=model).to(
            args.device
        )
    page = build_demo(TokenizerDemo(model, decoder, args.max_upload_pixels))
    page.queue(max_size=args.queue_size, default_concurrency_limit=1)
    page.launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=args.max_file_size
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; an input mistake (e.g. a missing --config) is one line, exit 2."""
    return run_cli("python -m vision_tokenizer.app", _serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
