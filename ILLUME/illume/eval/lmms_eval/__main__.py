"""`python -m illume.eval.lmms_eval ARGS`: lmms-eval's CLI with the `illume` model and this plugin's tasks.

`python -m illume.eval.lmms_eval tasks-dir` prints the task folder (for `--include_path`).
"""

import sys

from illume.eval.lmms_eval import TASKS_DIR, register


def main(argv: list[str]) -> int:
    if argv == ["tasks-dir"]:
        print(TASKS_DIR)
        return 0
    register()
    if "--include_path" not in argv:
        argv = [*argv, "--include_path", str(TASKS_DIR)]
    from lmms_eval.__main__ import cli_evaluate

    sys.argv = ["lmms_eval", *argv]
    cli_evaluate()
    return 0


sys.exit(main(sys.argv[1:]))
