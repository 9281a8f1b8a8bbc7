"""`python -m illume.hf SRC OUT`: convert a checkpoint folder to the HF format."""

import sys

from illume.hf.convert import main

sys.exit(main())
