"""Train the SDXL diffusion decoder on DualViTok codes.

    torchrun --nproc_per_node 8 vision_tokenizer/scripts/train_sdxl_decoder.py \
        configs/example/sdxl_decoder/sdxl_decoder_train.py [--train.lr=1e-5 ...]

A thin wrapper around `vision_tokenizer.sdxl.train.main` (same as `-m vision_tokenizer.sdxl`).
"""

from vision_tokenizer.sdxl.train import main

if __name__ == "__main__":
    main()
