"""`torchrun --nproc_per_node N -m vision_tokenizer.sdxl CONFIG [--a.b=value]`: train the decoder."""

from .train import main

if __name__ == "__main__":
    main()
