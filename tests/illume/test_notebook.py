"""ILLUME/inference.ipynb runs top to bottom (nbclient): with given paths incl. SDXL, and on its tiny fallback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from tests.conftest import REPO_ROOT, golden_dir
from tests.illume import tiny_models

NOTEBOOK = REPO_ROOT / "ILLUME" / "inference.ipynb"
ENV_KEYS = ("ILLUME_MLLM_PATH", "ILLUME_DUALVITOK_PATH", "ILLUME_DUALVITOK_CONFIG", "ILLUME_SDXL_DECODER_PATH",
            "ILLUME_DEVICE", "ILLUME_DTYPE", "ILLUME_RESOLUTION", "ILLUME_EXAMPLE_IMAGE", "ILLUME_DIFFUSION_STEPS",
            "ILLUME_QUICKSTART_DIR")  # fmt: skip

tiny_origin_dir = tiny_models.tiny_origin_dir  # shared session fixture
tiny_dualvitok_dir = tiny_models.tiny_dualvitok_dir  # shared session fixture
tiny_sdxl_dir = tiny_models.tiny_sdxl_dir  # shared session fixture


def _run(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, workdir: Path) -> dict[str, str]:
    """Execute the notebook in a fresh kernel; return what each tagged cell printed to stdout."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ILLUME_GOLDEN_DIR", str(golden_dir()))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    printed = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            text = "".join(out.get("text", "") for out in cell.outputs if out.get("name") == "stdout")
            printed[cell.metadata["tags"][0]] = text
    return printed


def test_notebook_is_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")
    assert notebook.cells[1].metadata["tags"] == ["parameters"]


def test_readme_names_every_variable_the_notebook_reads() -> None:
    import re

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    read = set(re.findall(r"os\.environ\.get\(\s*\"(ILLUME_\w+)\"", code))
    assert read >= {"ILLUME_MLLM_PATH", "ILLUME_RESOLUTION"} and read <= set(ENV_KEYS) | {"ILLUME_GOLDEN_DIR"}
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    paragraph = next(part for part in readme.split("\n\n") if "ILLUME/inference.ipynb" in part and "reads" in part)
    assert sorted(name for name in read if f"`{name}`" not in paragraph) == []
    table = notebook.cells[0].source
    assert sorted(name for name in read if f"`{name}`" not in table) == []


@pytest.mark.slow
def test_runs_with_given_paths_and_sdxl(
    tiny_origin_dir: Path, tiny_dualvitok_dir: Path, tiny_sdxl_dir: Path, monkeypatch, tmp_path: Path
) -> None:
    env = {
        "ILLUME_MLLM_PATH": str(tiny_origin_dir),
        "ILLUME_DUALVITOK_PATH": str(tiny_dualvitok_dir),
        "ILLUME_SDXL_DECODER_PATH": str(tiny_sdxl_dir),
        "ILLUME_DEVICE": "cpu",
        "ILLUME_RESOLUTION": "256x256",
        "ILLUME_DIFFUSION_STEPS": "1",
        "ILLUME_EXAMPLE_IMAGE": str(tmp_path / "photo.png"),
    }
    Image.new("RGB", (200, 120), (200, 40, 40)).save(env["ILLUME_EXAMPLE_IMAGE"])
    printed = _run(env, monkeypatch, tmp_path)
    assert printed["tiny-fallback"] == ""
    assert "SDXL decoder: loaded" in printed["load"]
    assert printed["understand"].startswith("answer: ")
    assert printed["generate"].strip() == "generated: (256, 256)"
    assert printed["edit"].strip() == "edited: (200, 120) input: (200, 120)"
    assert printed["sdxl"].strip() == "sdxl: (512, 512)"


@pytest.mark.slow
def test_falls_back_to_the_tiny_model_and_skips_sdxl(monkeypatch, tmp_path: Path) -> None:
    env = {"ILLUME_DEVICE": "cpu", "ILLUME_QUICKSTART_DIR": str(tmp_path / "no_quickstart_run")}
    printed = _run(env, monkeypatch, tmp_path)
    assert "using the tiny model" in printed["tiny-fallback"]
    assert "SDXL decoder: not given" in printed["load"]
    assert printed["generate"].strip() == "generated: (256, 256)"
    assert "skipping diffusion decoding" in printed["sdxl"]
    assert os.environ.get("ILLUME_MLLM_PATH") is None


@pytest.mark.slow
def test_prefers_the_quickstart_model_when_it_exists(monkeypatch, tmp_path: Path) -> None:
    quickstart = tmp_path / "quickstart"
    model = tiny_models.write_tiny_origin_model(golden_dir(), quickstart / "mllm" / "model")
    config = json.loads((model / "config.json").read_text())
    config["mm_vision_tower"]["max_pixels"] = 64 * 64  # what the quick start's training config sets
    (model / "config.json").write_text(json.dumps(config))
    tiny_models.write_tiny_dualvitok(golden_dir(), quickstart / "tokenizer" / "dualvitok")
    printed = _run({"ILLUME_DEVICE": "cpu", "ILLUME_QUICKSTART_DIR": str(quickstart)}, monkeypatch, tmp_path)
    assert "using the quick-start model" in printed["tiny-fallback"]
    assert "using the tiny model" not in printed["tiny-fallback"]
    assert "trained sizes: 64x64 | using 64x64" in printed["load"]  # read from the checkpoint
    assert printed["generate"].strip() == "generated: (64, 64)"
