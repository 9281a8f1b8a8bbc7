"""lmms-eval plugin of ILLUME+: the `illume` model and the `mme_nopost` task, registered, not copied.

Three ways to make lmms-eval see it (none copies files into lmms-eval's tree):

* the `lmms_eval.models` entry point declared by the package (`illume = illume.eval.lmms_eval:manifest`),
  which lmms-eval loads at start-up; tasks then come from `--include_path $(python -m illume.eval.lmms_eval tasks-dir)`;
* `LMMS_EVAL_PLUGINS=illume.eval.lmms_eval` (lmms-eval's older mechanism: it imports `.models` and
  adds `.tasks` to the task search path);
* `python -m illume.eval.lmms_eval [lmms-eval arguments]`, which registers both and runs lmms-eval's CLI.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODEL_NAME", "MODEL_CLASS_PATH", "TASKS_DIR", "manifest", "register"]

MODEL_NAME = "illume"
MODEL_CLASS_PATH = "illume.eval.lmms_eval.models.illume.IllumeLMMs"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def manifest():
    """lmms-eval's description of the `illume` model (the entry-point payload)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)


def register() -> None:
    """Add the `illume` model to the running lmms-eval registry (idempotent)."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)
