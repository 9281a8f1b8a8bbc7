"""`python -m illume.quickstart [--output-dir DIR] [--set KEY=VALUE ...]`."""

import sys

from illume.quickstart.command import main

if __name__ == "__main__":
    sys.exit(main())
