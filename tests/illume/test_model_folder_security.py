"""A model folder is data: a Python config planted in it never runs through any loader (issue 15.1).

The planted `dualvitok_config.py` writes a marker file when executed; the folder's config.json names
it as `mm_vision_tower.vq_config`, as a malicious download would. Every loader must refuse with one
line and leave no marker; only a Python config the user passes explicitly is executed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import illume
import pytest
from illume.hf.convert import main as convert_main
from illume.inference.pipeline import IllumePipeline
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
from vision_tokenizer.models.configuration_dualvitok import DualViTokConfigError

from tests.conftest import REPO_ROOT
from tests.illume import tiny_models

tiny_origin_dir = tiny_models.tiny_origin_dir
REFUSAL = "refusing to execute the Python config"


@pytest.fixture()
def planted(tiny_origin_dir: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(model folder, marker path): a copy of the tiny origin folder whose vq_config is a .py."""
    folder = tmp_path / "downloaded-model"
    shutil.copytree(tiny_origin_dir, folder)
    marker = tmp_path / "pwned"
    tiny_py = (REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py").read_text()
    # The side effect uses the `open` builtin, no import: mmengine turns imports of modules it does
    # not count as built in (the standard library, seen from a virtual environment) into lazy
    # objects, which would make the planted code fail instead of run when it is meant to run.
    (folder / "dualvitok_config.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n{tiny_py}")
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"]["vq_config"] = "dualvitok_config.py"
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_python_loaders_refuse_and_never_run_it(planted: tuple[Path, Path]) -> None:
    folder, marker = planted
    illume.register()
    for load in (
        lambda: IllumePipeline.from_pretrained(folder, device="cpu"),
        lambda: AutoModelForCausalLM.from_pretrained(folder),
        lambda: AutoModel.from_pretrained(folder),
        lambda: AutoModelForImageTextToText.from_pretrained(folder),
    ):
        with pytest.raises(DualViTokConfigError, match=REFUSAL):
            load()
    AutoProcessor.from_pretrained(folder)  # the processor never needs the architecture
    assert not marker.exists()


def test_converter_refuses_with_one_line(planted: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    folder, marker = planted
    assert convert_main([str(folder), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert REFUSAL in err and len(err.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_cli_chat_refuses_with_one_line(planted: tuple[Path, Path]) -> None:
    folder, marker = planted
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ILLUME_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "illume.cli", "chat", "--model", str(folder), "--question", "hi", "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=folder.parent,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("illume: error:")]
    assert len(errors) == 1 and REFUSAL in errors[0] and "Traceback" not in done.stderr
    assert not marker.exists()


def test_only_an_explicit_python_config_runs(planted: tuple[Path, Path]) -> None:
    """Naming the file yourself is consent: then (and only then) the config executes and loads."""
    folder, marker = planted
    model = AutoModelForCausalLM.from_pretrained(folder, dualvitok_config=folder / "dualvitok_config.py")
    assert marker.read_text() == "ran" and model.model.has_vision
