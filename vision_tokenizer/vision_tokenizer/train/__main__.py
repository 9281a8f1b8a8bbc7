"""`python -m vision_tokenizer.train CONFIG [--a.b=value ...]`."""

import sys

from vision_tokenizer.train.cli import main
from vision_tokenizer.utils.user_errors import run_cli

if __name__ == "__main__":
    sys.exit(run_cli("python -m vision_tokenizer.train", main))
