"""scripts/download_checkpoints.py, always offline: a recording stand-in for `snapshot_download`,
and the real `huggingface_hub` resolving a fake cache laid out as the Hub's cache is."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "download_checkpoints.py"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
RELEASED = {
    "ILLUME-MLLM/illume_plus-qwen2_5-3b": "illume_plus-qwen2_5-3b",
    "ILLUME-MLLM/illume_plus-qwen2_5-7b": "illume_plus-qwen2_5-7b",
    "ILLUME-MLLM/dualvitok": "dualvitok",
    "ILLUME-MLLM/dualvitok-sdxl-decoder": "dualvitok-sdxl-decoder",
}


@pytest.fixture
def script(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a real network call would fail instead of going out
    spec = importlib.util.spec_from_file_location("download_checkpoints", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def recorded(monkeypatch):
    """Replace huggingface_hub.snapshot_download by a recorder that writes one file per call."""
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        folder = Path(kwargs["local_dir"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.bin").write_text(repo_id)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return calls


@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], ["ILLUME-MLLM/illume_plus-qwen2_5-3b", "ILLUME-MLLM/dualvitok", "ILLUME-MLLM/dualvitok-sdxl-decoder"]),
        (["--llm", "7b", "--no-sdxl-decoder"], ["ILLUME-MLLM/illume_plus-qwen2_5-7b", "ILLUME-MLLM/dualvitok"]),
        (["--llm", "all", "--no-dualvitok", "--no-sdxl-decoder"],
         ["ILLUME-MLLM/illume_plus-qwen2_5-3b", "ILLUME-MLLM/illume_plus-qwen2_5-7b"]),
    ],
)  # fmt: skip
def test_each_release_goes_to_its_folder(script, recorded, tmp_path, flags, expected):
    assert script.main([*flags, "--dir", str(tmp_path), "--revision", "v1"]) == 0
    assert [repo for repo, _ in recorded] == expected
    for repo, kwargs in recorded:
        assert Path(kwargs["local_dir"]) == tmp_path / RELEASED[repo]
        assert kwargs["revision"] == "v1"
        assert (tmp_path / RELEASED[repo] / "weights.bin").read_text() == repo


def test_dry_run_fetches_nothing(script, recorded, tmp_path, capsys):
    assert script.main(["--llm", "all", "--dir", str(tmp_path), "--dry-run"]) == 0
    assert recorded == []
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"{repo} -> {tmp_path / folder}" for repo, folder in RELEASED.items()]


def test_nothing_selected_is_an_error(script, recorded, tmp_path):
    with pytest.raises(SystemExit, match="nothing selected"):
        script.main(["--llm", "none", "--no-dualvitok", "--no-sdxl-decoder", "--dir", str(tmp_path)])


def _fake_cache(cache: Path, repo_id: str, files: dict[str, str]) -> Path:
    """A repository as the Hub cache stores it: refs/main → snapshots/<commit>/<files>."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, text in files.items():
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text(text)
    return snapshot


def test_from_cache_links_cached_snapshots_with_the_real_hub_client(tmp_path):
    cache = tmp_path / "hub"
    contents = {
        "ILLUME-MLLM/illume_plus-qwen2_5-3b": {"config.json": "{}", "model.safetensors": "3b"},
        "ILLUME-MLLM/dualvitok": {"pytorch_model.bin": "tok"},
        "ILLUME-MLLM/dualvitok-sdxl-decoder": {"model_index.json": "{}", "unet/config.json": "{}"},
    }
    for repo, files in contents.items():
        _fake_cache(cache, repo, files)
    root = tmp_path / "checkpoints"
    command = [sys.executable, str(SCRIPT), "--from-cache", "--cache-dir", str(cache), "--dir", str(root)]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    for _ in range(2):  # the second run finds every link in place
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    for repo, files in contents.items():
        for name, text in files.items():
            assert (root / RELEASED[repo] / name).read_text() == text


def test_from_cache_names_a_missing_repository(script, tmp_path):
    _fake_cache(tmp_path / "hub", "ILLUME-MLLM/dualvitok", {"pytorch_model.bin": "tok"})
    with pytest.raises(SystemExit, match="ILLUME-MLLM/illume_plus-qwen2_5-3b .* is not in"):
        script.main(["--from-cache", "--cache-dir", str(tmp_path / "hub"), "--dir", str(tmp_path / "ck")])
    assert not (tmp_path / "ck" / "illume_plus-qwen2_5-3b").exists()


def test_from_cache_refuses_to_replace_an_existing_folder(script, tmp_path):
    _fake_cache(tmp_path / "hub", "ILLUME-MLLM/dualvitok", {"pytorch_model.bin": "tok"})
    (tmp_path / "ck" / "dualvitok").mkdir(parents=True)
    flags = ["--llm", "none", "--no-sdxl-decoder", "--from-cache", "--cache-dir", str(tmp_path / "hub")]
    with pytest.raises(FileExistsError, match="dualvitok already exists"):
        script.main([*flags, "--dir", str(tmp_path / "ck")])
