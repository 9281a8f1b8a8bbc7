"""Training checkpoints: a truncated, empty or half-written newest checkpoint never blocks a resume,
is named and set aside; `dualvitok train` resumes by default and `--fresh` refuses to overwrite."""

from __future__ import annotations

import logging

import pytest
import torch
from vision_tokenizer.runtime.checkpoints import CheckpointDir
from vision_tokenizer.sdxl.checkpoint import TRAINER_DIR, checkpoint_dir, resolve_resume
from vision_tokenizer.train.loop import choose_start
from vision_tokenizer.utils.user_errors import UserError


def _save(store: CheckpointDir, step: int) -> None:
    store.save(step, lambda path: torch.save({"steps": step, "w": torch.full((64,), float(step))}, path))


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_newest_file_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    store = CheckpointDir(tmp_path)
    for step in (1, 2, 3):
        _save(store, step)
    newest = store.path_for(3)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3] if damage == "truncated" else b"")
    with caplog.at_level(logging.INFO):
        point = store.latest()
    assert point.checkpoint.step == 2 and point.state["steps"] == 2
    assert point.set_aside == [tmp_path / "0000003.pt.corrupt"]  # it had a marker: corrupt, not incomplete
    assert not newest.exists() and not (tmp_path / "0000003.pt.complete").exists()
    assert "0000003.pt" in caplog.text and "resuming from" in caplog.text and "0000002.pt" in caplog.text
    _save(store, 3)  # the run writes step 3 again, next to the set-aside copy
    assert store.latest().checkpoint.step == 3


def test_an_interrupted_write_leaves_no_checkpoint_and_retention_keeps_the_newest(tmp_path):
    store = CheckpointDir(tmp_path, keep=2)
    for step in (1, 2, 3):
        _save(store, step)
    (tmp_path / "0000004.pt.tmp").write_bytes(b"PK\x03\x04 half")  # killed during torch.save
    assert [c.step for c in store.list()] == [2, 3]
    point = store.latest()
    assert point.checkpoint.step == 3 and point.set_aside == [tmp_path / "0000004.pt.incomplete"]


def test_sdxl_resume_skips_a_folder_without_its_trainer_state(tmp_path):
    store = checkpoint_dir(tmp_path, keep=None)
    for step in (1, 2):
        store.save(step, lambda folder, step=step: _sdxl_files(folder, step))
    torn = store.path_for(2) / TRAINER_DIR / "state.pt"
    torn.write_bytes(torn.read_bytes()[:10])
    point = resolve_resume(tmp_path, "latest", set_aside=True)
    assert point.checkpoint.step == 1 and point.state["step"] == 1
    assert (tmp_path / "checkpoints" / "checkpoint-0000002.corrupt").is_dir()
    with pytest.raises(FileNotFoundError, match="not a training checkpoint"):
        resolve_resume(
            tmp_path, str(tmp_path / "checkpoints" / "checkpoint-0000002.corrupt"), set_aside=False
        )


def _sdxl_files(folder, step):
    (folder / TRAINER_DIR).mkdir()
    torch.save({"step": step, "pad": torch.zeros(256)}, folder / TRAINER_DIR / "state.pt")


class _Config(dict):
    __getattr__ = dict.get

    def __setattr__(self, key, value):
        self[key] = value


def test_train_resumes_by_default_and_fresh_needs_overwrite(tmp_path):
    cfg = _Config(results_dir=str(tmp_path), vq_model={"type": "DualViTok"}, resume=None)
    choose_start(cfg)
    assert cfg.resume == "latest"  # the default: continue whatever the folder holds
    run = tmp_path / "DualViTok"
    _save(CheckpointDir(run / "checkpoints"), 5)
    (run / "metrics.jsonl").write_text('{"step": 5}\n')
    with pytest.raises(UserError, match="--overwrite"):
        choose_start(cfg, fresh=True)
    assert (run / "checkpoints" / "0000005.pt").is_file()  # nothing touched
    choose_start(cfg, fresh=True, overwrite=True)
    assert cfg.resume is None and not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()
