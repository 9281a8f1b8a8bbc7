"""`torchrun --nproc_per_node N -m vision_tokenizer.sdxl CONFIG [--a.b=value]`: train the decoder."""

import sys

from vision_tokenizer.utils.user_errors import run_cli

from .train import main

if __name__ == "__main__":
    sys.exit(run_cli("python -m vision_tokenizer.sdxl", main))
