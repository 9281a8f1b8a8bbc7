"""Thin launcher: `torchrun --nproc_per_node N vision_tokenizer/scripts/train_dualvitok.py CONFIG [--a.b=value]`.

Same as `python -m vision_tokenizer.train`; see `--help`.
"""

from vision_tokenizer.train.cli import main

if __name__ == "__main__":
    main()
