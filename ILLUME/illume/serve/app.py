"""Gradio demo of ILLUME+: chat about images, text-to-image and editing, optional SDXL decoding.

    python -m illume.serve.app --model MLLM_DIR --dualvitok DUALVITOK [--sdxl-decoder DIR]

The models are loaded once in `main()` into an `IllumePipeline`; `build_demo` only lays out the
page. Each browser session keeps its own conversation (`gr.State`), answers stream from a
generator created per request, and the queue runs one model call at a time while others wait
(bounded by `--queue-size`). Bad input (too large, too long, not an image) is reported in the
page through `gr.Error`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from vision_tokenizer.job_args import add_option
from vision_tokenizer.utils.user_errors import OneLineErrorParser, require_path, run_cli

from illume.serve.handlers import DECODER_CHOICES, ChatSession, DemoHandlers
from illume.serve.limits import InputError, InputLimits

__all__ = ["build_demo", "main"]

EXAMPLES_DIR = Path(__file__).resolve().parents[3] / "assets" / "examples"
TIPS = (
    "Tips: text-to-image works best with temperature 1.0, top-k 2048, top-p 1.0, CFG 2.0; "
    "editing with temperature 0.7, top-k 512, top-p 0.8, CFG 1.5; the SDXL decoder with guidance 1.5-2.0."
)
T2I_EXAMPLES = (
    "a cat wearing a small red hat, studio photo",
    "a lighthouse on a cliff at sunset, oil painting",
    "a bowl of ramen with chopsticks, top view",
)
# Each bundled photo with an instruction that fits what it shows.
EDIT_EXAMPLES = {
    "astronaut.jpg": "Replace the flag behind the astronaut with a window.",
    "chelsea.jpg": "Make the cat wear a small red hat.",
    "coffee.jpg": "Change the colour of the cup to green.",
    "rocket.jpg": "Make it night, with stars in the sky.",
}


def _friendly(fn):
    """Run a handler, turning `InputError` (and pipeline `ValueError`s) into messages in the page."""
    import gradio as gr

    def wrapper(*args):
        try:
            return fn(*args)
        except (InputError, ValueError) as err:
            raise gr.Error(str(err)) from None

    return wrapper


def _friendly_stream(fn):
    """`_friendly` for a streaming (generator) handler: errors surface while iterating too."""
    import gradio as gr

    def wrapper(*args):
        try:
            yield from fn(*args)
        except (InputError, ValueError) as err:
            raise gr.Error(str(err)) from None

    return wrapper


def _sampling_controls(
    temperature: float, top_k: int, top_p: float, cfg: float | None, max_k: int, elem_prefix: str
):
    import gradio as gr

    controls = [
        gr.Slider(0.0, 1.5, value=temperature, step=0.05, label="Temperature (0: greedy)",
                  elem_id=f"{elem_prefix}-temperature"),
        gr.Slider(1, max_k, value=top_k, step=1, label="Top-k", elem_id=f"{elem_prefix}-top-k"),
        gr.Slider(0.05, 1.0, value=top_p, step=0.05, label="Top-p", elem_id=f"{elem_prefix}-top-p"),
    ]  # fmt: skip
    if cfg is not None:
        controls.append(gr.Slider(1.0, 10.0, value=cfg, step=0.1, label="LLM CFG scale", elem_id=f"{elem_prefix}-cfg"))
    return controls


def _decoder_controls(has_sdxl: bool, elem_prefix: str):
    import gradio as gr

    with gr.Accordion("Decoder", open=False):
        choices = list(DECODER_CHOICES) if has_sdxl else [DECODER_CHOICES[0]]
        decoder = gr.Radio(
            choices, value=DECODER_CHOICES[0], label="Decode codes with", elem_id=f"{elem_prefix}-decoder"
        )
        diffusion_cfg = gr.Slider(
            1.0, 15.0, value=1.5, step=0.5, label="Diffusion guidance", visible=has_sdxl
        )
        diffusion_steps = gr.Slider(1, 100, value=20, step=1, label="Diffusion steps", visible=has_sdxl)
    return decoder, diffusion_cfg, diffusion_steps


def _chat_tab(handlers: DemoHandlers) -> None:
    import gradio as gr

    session = gr.State(ChatSession())
    with gr.Row():
        with gr.Column(scale=1):
            image = gr.Image(
                type="filepath", label="Image (optional, sent with the next message)", elem_id="chat-image"
            )
            with gr.Accordion("Text generation", open=False):
                max_tokens = gr.Slider(1, handlers.limits.max_new_tokens, value=min(1024, handlers.limits.max_new_tokens), step=1,
                                       label="Max output tokens", elem_id="chat-max-tokens")  # fmt: skip
                do_sample = gr.Checkbox(False, label="Sample (off: greedy)")
                temperature, top_k, top_p = _sampling_controls(1.0, 128, 1.0, None, 4096, "chat")
                seed = gr.Number(42, precision=0, label="Seed")
        with gr.Column(scale=2):
            chatbot = gr.Chatbot(label="ILLUME+", height=480, elem_id="chatbot")
            message = gr.Textbox(placeholder="Ask about the image…", show_label=False, elem_id="chat-message",
                                 max_length=handlers.limits.max_prompt_chars)  # fmt: skip
            with gr.Row():
                send = gr.Button("Send", variant="primary", elem_id="chat-send")
                clear = gr.Button("Clear", elem_id="chat-clear")

    def respond(state, text, image_path, tokens, sample, temp, k, p, seed_value):
        for updated in handlers.chat(
            state, text, image_path, max_new_tokens=tokens, temperature=temp, top_k=k, top_p=p,
            do_sample=sample, seed=seed_value,
        ):  # fmt: skip
            yield updated, updated.messages(), "", None

    inputs = [session, message, image, max_tokens, do_sample, temperature, top_k, top_p, seed]
    outputs = [session, chatbot, message, image]
    send.click(_friendly_stream(respond), inputs, outputs)
    message.submit(_friendly_stream(respond), inputs, outputs)
    clear.click(lambda: (ChatSession(), [], "", None), None, outputs, queue=False)


def _generate_tab(handlers: DemoHandlers) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(
                label="Prompt", lines=3, elem_id="t2i-prompt", max_length=handlers.limits.max_prompt_chars
            )
            resolution = gr.Dropdown(
                handlers.resolution_choices(), value=handlers.default_resolution(), label="Resolution (HxW)",
                elem_id="t2i-resolution",
            )
            with gr.Accordion("Image generation", open=False):
                temperature, top_k, top_p, cfg = _sampling_controls(1.0, 2048, 1.0, 2.0, 8192, "t2i")
                seed = gr.Number(42, precision=0, label="Seed")
            decoder, diffusion_cfg, diffusion_steps = _decoder_controls(handlers.has_sdxl, "t2i")
            button = gr.Button("Generate", variant="primary", elem_id="t2i-generate")
            gr.Examples([[p] for p in T2I_EXAMPLES], inputs=[prompt])
        with gr.Column():
            output = gr.Image(label="Generated image", elem_id="t2i-output", format="png")

    def run(text, size, temp, k, p, scale, seed_value, choice, d_cfg, d_steps):
        return handlers.generate(text, size, cfg_scale=scale, temperature=temp, top_k=k, top_p=p, seed=seed_value,
                                 decoder=choice, diffusion_cfg_scale=d_cfg, diffusion_steps=d_steps)  # fmt: skip

    button.click(
        _friendly(run),
        [prompt, resolution, temperature, top_k, top_p, cfg, seed, decoder, diffusion_cfg, diffusion_steps],
        [output],
    )


def _edit_tab(handlers: DemoHandlers) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column():
            image = gr.Image(type="filepath", label="Image to edit", elem_id="edit-image")
            instruction = gr.Textbox(label="Instruction", lines=2, elem_id="edit-instruction",
                                     max_length=handlers.limits.max_prompt_chars)  # fmt: skip
            resolution = gr.Dropdown(handlers.resolution_choices(include_auto=True),
                                     value=handlers.default_resolution(include_auto=True),
                                     label="Working resolution (HxW)", elem_id="edit-resolution")  # fmt: skip
            with gr.Accordion("Image generation", open=False):
                temperature, top_k, top_p, cfg = _sampling_controls(0.7, 512, 0.8, 1.5, 8192, "edit")
                seed = gr.Number(42, precision=0, label="Seed")
            decoder, diffusion_cfg, diffusion_steps = _decoder_controls(handlers.has_sdxl, "edit")
            button = gr.Button("Edit", variant="primary", elem_id="edit-run")
            pairs = [[str(EXAMPLES_DIR / name), text] for name, text in EDIT_EXAMPLES.items()
                     if (EXAMPLES_DIR / name).is_file()]  # fmt: skip
            if pairs:
                gr.Examples(pairs, inputs=[image, instruction])
        with gr.Column():
            output = gr.Image(label="Edited image", elem_id="edit-output", format="png")

    def run(path, text, size, temp, k, p, scale, seed_value, choice, d_cfg, d_steps):
        return handlers.edit(path, text, size, cfg_scale=scale, temperature=temp, top_k=k, top_p=p, seed=seed_value,
                             decoder=choice, diffusion_cfg_scale=d_cfg, diffusion_steps=d_steps)  # fmt: skip

    button.click(
        _friendly(run),
        [
            image,
            instruction,
            resolution,
            temperature,
            top_k,
            top_p,
            cfg,
            seed,
            decoder,
            diffusion_cfg,
            diffusion_steps,
        ],
        [output],
    )


def build_demo(handlers: DemoHandlers, title: str = "ILLUME+"):
    """The page: three tabs over the same pipeline (nothing is loaded here)."""
    import gradio as gr

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\nUnderstand, generate and edit images with one model. {TIPS}")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                _chat_tab(handlers)
            with gr.Tab("Text to image", id="generate"):
                _generate_tab(handlers)
            with gr.Tab("Edit", id="edit"):
                _edit_tab(handlers)
    return demo


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    limits = InputLimits()
    parser = OneLineErrorParser(prog="python -m illume.serve.app", description=__doc__.splitlines()[0])
    add_option(parser, "--model", "--model_name", "--model_path", dest="model", required=True,
               help="ILLUME+ MLLM checkpoint folder (origin or HF format)")
    add_option(parser, "--dualvitok", "--tokenizer_checkpoint", "--vq-ckpt", "--vq_ckpt", dest="dualvitok",
               required=True, help="DualViTok checkpoint (file or folder) for decoding images")
    add_option(parser, "--dualvitok-config", "--tokenizer_config", dest="dualvitok_config", default=None,
               help="DualViTok config when the checkpoint has none beside it")
    add_option(parser, "--sdxl-decoder", "--diffusion_decoder_path", dest="sdxl_decoder", default=None,
               help="SDXL decoder folder (enables the 2x diffusion decoder)")
    parser.add_argument("--adapter", default=None, help="LoRA adapter folder of a training run, merged into --model")
    parser.add_argument(
        "--no-generation-config", action="store_true",
        help="ignore the checkpoint's generation_config.json (its repetition penalty and sampling defaults)",
    )  # fmt: skip
    parser.add_argument("--speculative", choices=("none", "jacobi"), default="jacobi",
                        help="jacobi: exact speculative Jacobi decoding of images, fewer forward passes (default)")
    parser.add_argument("--quantize", choices=("none", "int8", "fp8"), default="none",
                        help="weight-only quantization of the LLM layers (torchao; fp8 needs a Hopper/Ada GPU)")
    parser.add_argument("--offload", action="store_true",
                        help="keep DualViTok and the SDXL decoder on the CPU except while they decode")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument(
        "--dtype", default=None, help="fp32 / bf16 / fp16 (default: bf16 on CUDA, fp32 on CPU)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (0.0.0.0 for all interfaces)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public Gradio link")
    parser.add_argument(
        "--queue-size", type=int, default=10, help="requests waiting before new ones are refused"
    )
    parser.add_argument("--max-file-size", default=limits.max_file_size, help="largest upload, e.g. 20mb")
    parser.add_argument("--max-image-pixels", type=int, default=limits.max_image_pixels)
    parser.add_argument("--max-prompt-chars", type=int, default=limits.max_prompt_chars)
    parser.add_argument("--max-new-tokens", type=int, default=limits.max_new_tokens)
    return parser.parse_args(argv)


def _serve(argv: Sequence[str]) -> None:
    from illume.inference.pipeline import IllumePipeline

    args = _parse_args(argv)
    require_path(args.model, "--model", folder=True)
    require_path(args.dualvitok, "--dualvitok")
    for flag, value, folder in (("--dualvitok-config", args.dualvitok_config, None),
                                ("--sdxl-decoder", args.sdxl_decoder, True), ("--adapter", args.adapter, True)):  # fmt: skip
        if value is not None:
            require_path(value, flag, folder=folder)
    limits = InputLimits(
        max_file_size=args.max_file_size,
        max_image_pixels=args.max_image_pixels,
        max_prompt_chars=args.max_prompt_chars,
        max_new_tokens=args.max_new_tokens,
    )
    pipe = IllumePipeline.from_pretrained(
        args.model,
        dualvitok=args.dualvitok,
        dualvitok_config=args.dualvitok_config,
        sdxl_decoder=args.sdxl_decoder,
        adapter=args.adapter,
        device=args.device,
        dtype=args.dtype,
        quantize=args.quantize,
        offload=args.offload,
        use_generation_config=not args.no_generation_config,
    )
    demo = build_demo(DemoHandlers(pipe, limits, speculative=args.speculative))
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share, max_file_size=limits.max_file_size
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted; an input mistake (e.g. a missing --model folder) is one line, exit 2."""
    return run_cli("python -m illume.serve.app", _serve, argv)


if __name__ == "__main__":
    raise SystemExit(main())
