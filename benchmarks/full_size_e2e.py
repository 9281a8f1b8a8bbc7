"""Text-to-image end to end at full size with random weights: does the real path fit and run?

Stages, each with its seconds and peak CUDA memory: a 3B-shape LLM (Qwen2.5-3B + the ILLUME
extension rows, bf16) decodes one 512² image's codes with CFG 2.0 (engine, `--speculative`
none and jacobi, optionally int8), the full DualViTok decodes them to 512² pixels, and the
full-size SDXL decoder UNet (SDXL widths, 4 + 64 input channels) renders 1024². Weights are
random: only time and memory are meaningful. The DualViTok and SDXL decoder can be offloaded to
the CPU between uses (`--offload`), as `illume generate --offload` does.

    python benchmarks/full_size_e2e.py --json e2e.json            # CUDA, full size
    python benchmarks/full_size_e2e.py --scale tiny --sdxl-steps 1  # CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import generation_speed as gs
import torch
from illume.inference import GenerationEngine, PromptEmbeddings, RowSpec, SamplingConfig
from illume.inference.offload import resident
from illume.inference.sampling import row_keys
from illume.vocab import ImageGrid, ImageVocabulary

REPO = Path(__file__).resolve().parents[1]
DUALVITOK_CONFIGS = {"full": "configs/example/dualvitok/dualvitok_anyres_max512.py", "tiny": "configs/tiny/dualvitok_tiny.py"}

# SDXL-base UNet and VAE layouts (diffusers config fields); the decoder widens conv_in by the
# DualViTok code-map channels.
SDXL_UNET = {
    "sample_size": 128,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}


class Stages:
    """Seconds and peak memory of named stages."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rows: dict[str, dict] = {}

    def run(self, name: str, fn):
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        row = {"seconds": time.perf_counter() - start}
        if cuda:
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        self.rows[name] = row
        print(name, json.dumps(row), flush=True)
        return out


def build_sdxl(scale: str, code_channels: int, device: torch.device, dtype: torch.dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from vision_tokenizer.sdxl import DualViTokSDXLDecoderPipeline
    from vision_tokenizer.sdxl.tiny import SDXL_SCHEDULER_CONFIG, tiny_sdxl_components

    if scale == "tiny":
        vae, unet, scheduler = tiny_sdxl_components(code_channels)
    else:
        vae = AutoencoderKL.from_config(SDXL_VAE)
        unet = UNet2DConditionModel.from_config({**SDXL_UNET, "in_channels": 4 + code_channels})
        scheduler = EulerDiscreteScheduler.from_config(SDXL_SCHEDULER_CONFIG)
    pipe = DualViTokSDXLDecoderPipeline(vae=vae.eval(), unet=unet.eval().to(dtype), scheduler=scheduler)
    return pipe.to(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--resolution", type=int, default=512, help="code grid side in pixels (SDXL renders 2x)")
    parser.add_argument("--speculative", nargs="+", choices=("none", "jacobi"), default=["jacobi", "none"])
    parser.add_argument("--quantize", choices=("none", "int8", "fp8"), default="none")
    parser.add_argument("--offload", action="store_true", help="decoders on the CPU between uses")
    parser.add_argument("--sdxl-steps", type=int, default=20)
    parser.add_argument("--json", help="write the stage table here")
    args = parser.parse_args(argv)

    full = args.scale == "full"
    device = torch.device("cuda" if full else "cpu")
    if full and not torch.cuda.is_available():
        raise SystemExit("the full-size run needs a CUDA GPU; use --scale tiny on CPU")
    dtype = torch.bfloat16 if full else torch.float32
    stages = Stages(device)
    torch.manual_seed(0)
    shapes = gs.ILLUME_3B if full else gs.TINY
    model = stages.run("build_llm", lambda: gs.build_model(shapes, device, dtype))
    if args.quantize != "none":
        from illume.inference.quantize import quantize_llm

        stages.run("quantize_llm", lambda: quantize_llm(model, args.quantize))
    vocab = ImageVocabulary.from_tokenizer(gs._LayoutTokenizer(shapes.base_vocab, shapes.codebooks))
    engine = GenerationEngine(model, vocab)
    grid = ImageGrid.for_resolution(args.resolution, args.resolution)
    sampling = SamplingConfig.create(1.0, 2048, 1.0, cfg_scale=2.0)
    ids = torch.randint(0, shapes.base_vocab - 22, (2, 40), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        prompt = PromptEmbeddings(model.get_input_embeddings()(ids), torch.ones_like(ids))
    keys = row_keys([torch.Generator().manual_seed(0)])
    tokens = None
    passes = {}
    for mode in args.speculative:
        for attempt in ("first", "again"):  # the first call builds the cache and captures graphs
            before = engine.forward_passes
            out = stages.run(f"llm_codes_{mode}_{attempt}", lambda m=mode: engine.generate(
                prompt, [RowSpec(image=grid)], sampling, keys, speculative=m))  # fmt: skip
            passes[mode] = engine.forward_passes - before
            tokens = tokens or out[0]
    semantic, pixel = vocab.parse_image_block(tokens, grid)

    from vision_tokenizer.models.dualvitok import DualViTok
    from vision_tokenizer.sdxl.conditioning import code_map_channels

    decoder_device = torch.device("cpu") if args.offload else device
    with torch.device(decoder_device):  # random init where the weights live (fast on a GPU)
        dualvitok = stages.run("build_dualvitok", lambda: DualViTok.from_config(
            str(REPO / DUALVITOK_CONFIGS[args.scale])).eval().to(decoder_device))  # fmt: skip
    with torch.no_grad(), resident(dualvitok, device, args.offload):
        pixels = stages.run("dualvitok_decode", lambda: dualvitok.decode_code(semantic[None].to(device), pixel[None].to(device)))
    with torch.device(decoder_device):
        sdxl = stages.run("build_sdxl", lambda: build_sdxl(args.scale, code_map_channels(dualvitok), decoder_device, dtype))
    sdxl.dualvitok = dualvitok
    with torch.no_grad(), resident(sdxl, device, args.offload):
        images = stages.run("sdxl_decode", lambda: sdxl(
            vq_indices=(semantic[None].to(device), pixel[None].to(device)), guidance_scale=1.5,
            num_inference_steps=args.sdxl_steps, generator=[torch.Generator(device).manual_seed(0)]).images)  # fmt: skip
    result = {
        "device": torch.cuda.get_device_name() if full else "cpu", "torch": torch.__version__, "scale": args.scale,
        "quantize": args.quantize, "offload": args.offload, "code_resolution": args.resolution,
        "dualvitok_pixels": list(pixels.shape[-2:]), "sdxl_image": list(images[0].size),
        "sdxl_steps": args.sdxl_steps, "forward_passes": passes, "stages": stages.rows,
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
