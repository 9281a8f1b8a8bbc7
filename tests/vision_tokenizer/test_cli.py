"""`dualvitok reconstruct` end to end on CPU with the tiny config and the bundled photos."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from vision_tokenizer.cli import main
from vision_tokenizer.data.image_io import image_to_tensor, load_image, psnr, tensor_to_image
from vision_tokenizer.job_args import reconstruct_parser
from vision_tokenizer.models.dualvitok import DualViTok

from ..conftest import REPO_ROOT

TINY = str(REPO_ROOT / "configs" / "tiny" / "dualvitok_tiny.py")
EXAMPLES = REPO_ROOT / "assets" / "examples"
SMALL = str(64 * 64)  # every bundled photo becomes 64x64 or 48x64: fast on CPU


def _run(tmp_path: Path, *extra: str, out: str = "out") -> tuple[int, Path]:
    out_dir = tmp_path / out
    code = main(["reconstruct", *extra, "--config", TINY, "--out", str(out_dir), "--device", "cpu",
                 "--max-pixels", SMALL])
    return code, out_dir


@dataclass
class Run:
    code: int
    out: Path
    stdout: str
    stderr: str
    corrupt: Path


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One CLI run shared by several tests: a corrupt file plus the four photos, batches of up to 4."""
    tmp_path = tmp_path_factory.mktemp("cli")
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes((EXAMPLES / "chelsea.jpg").read_bytes()[:300])
    photos = [str(EXAMPLES / f"{name}.jpg") for name in ("astronaut", "chelsea", "coffee", "rocket")]
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code, out = _run(tmp_path, str(corrupt), *photos, "--seed", "3", "--batch-size", "4")
    return Run(code, out, stdout.getvalue(), stderr.getvalue(), corrupt)


def test_reconstruct_photo_and_report_corrupt_file(photo_run: Run) -> None:
    out, corrupt = photo_run.out, photo_run.corrupt
    assert photo_run.code == 1  # one input failed
    assert f"error: {corrupt}" in photo_run.stderr and "no --dualvitok checkpoint" in photo_run.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["failed"]) == [str(corrupt)]
    assert "corrupt or truncated" in metrics["failed"][str(corrupt)]
    assert sorted(metrics["images"]) == ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg"]  # the others went on

    result = metrics["images"]["astronaut.jpg"]
    assert math.isfinite(result["psnr"])
    assert f"PSNR {result['psnr']:.2f} dB" in photo_run.stdout
    assert metrics["mean_psnr"] == pytest.approx(np.mean([r["psnr"] for r in metrics["images"].values()]))
    assert result["size"] == [64, 64] and result["original_size"] == [512, 512]

    recon = Image.open(out / "astronaut.jpg.recon.png")
    assert recon.size == (64, 64) and recon.mode == "RGB"
    # PSNR is measured against the resized input (PIL bicubic 512 → 64), recomputed here independently.
    reference = load_image(EXAMPLES / "astronaut.jpg").resize((64, 64), Image.Resampling.BICUBIC)
    assert result["psnr"] == pytest.approx(psnr(reference, recon), abs=1e-9)

    codes = json.loads((out / "astronaut.jpg.codes.json").read_text())
    semantic, pixel = np.array(codes["semantic_indices"]), np.array(codes["pixel_indices"])
    # 64x64: the ViT sees 56x56 (floor to 28) → 2x2 semantic codes; pixel stride 16 → 4x4.
    assert semantic.shape == (2, 2) and pixel.shape == (4, 4)
    assert semantic.max() < 256 and pixel.max() < 768  # tiny codebook sizes


def test_saved_codes_decode_to_the_saved_reconstruction(photo_run: Run) -> None:
    torch.manual_seed(3)
    model = DualViTok.from_config(TINY).eval()
    codes = json.loads((photo_run.out / "chelsea.jpg.codes.json").read_text())
    assert codes["size"] == [48, 64] and codes["original_size"] == [300, 451]
    with torch.inference_mode():
        image = model.decode_code(torch.tensor([codes["semantic_indices"]]), torch.tensor([codes["pixel_indices"]]))
    assert np.array_equal(np.asarray(tensor_to_image(image)), np.asarray(Image.open(photo_run.out / "chelsea.jpg.recon.png")))


def test_batching_equal_sizes_gives_the_same_codes(photo_run: Run, tmp_path: Path) -> None:
    """chelsea, coffee and rocket (all 48x64) shared a batch above; one at a time must agree."""
    photos = [str(EXAMPLES / name) for name in ("chelsea.jpg", "rocket.jpg")]
    code, out = _run(tmp_path, *photos, "--seed", "3", "--batch-size", "1", "--codes-format", "npz")
    assert code == 0
    for name in ("chelsea", "rocket"):
        single = np.load(out / f"{name}.jpg.codes.npz")
        batched = json.loads((photo_run.out / f"{name}.jpg.codes.json").read_text())
        assert single["size"].tolist() == batched["size"] == [48, 64]
        assert single["semantic_indices"].tolist() == batched["semantic_indices"]
        assert single["pixel_indices"].tolist() == batched["pixel_indices"]


def test_folder_input_with_duplicate_names_and_output_inside(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLES / "chelsea.jpg", folder / "cat.jpg")
    shutil.copy(EXAMPLES / "rocket.jpg", folder / "sub" / "cat.jpg")
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    out = folder / "out"
    for _ in range(2):  # the second run must not pick up the first run's PNGs
        assert main(["reconstruct", str(folder), "--config", TINY, "--out", str(out), "--device", "cpu",
                     "--max-pixels", str(32 * 32)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["images"]) == ["cat.jpg", "cat_2.jpg"]
    assert (out / "cat.jpg.recon.png").is_file() and (out / "cat_2.jpg.recon.png").is_file()
    assert metrics["skipped"] == {str(folder / "notes.txt"): metrics["skipped"][str(folder / "notes.txt")]}
    assert "unsupported file type '.txt'" in metrics["skipped"][str(folder / "notes.txt")]


def test_checkpoint_is_loaded(tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = DualViTok.from_config(TINY).eval()
    model.save_pretrained(tmp_path / "ckpt")
    code, out = _run(tmp_path, str(EXAMPLES / "coffee.jpg"), "--checkpoint", str(tmp_path / "ckpt"))
    assert code == 0
    image = image_to_tensor(load_image(EXAMPLES / "coffee.jpg"), max_pixels=64 * 64)
    with torch.inference_mode():
        semantic, pixel = model.encode_code(image)
    codes = json.loads((out / "coffee.jpg.codes.json").read_text())
    assert codes["semantic_indices"] == semantic[0].tolist()
    assert codes["pixel_indices"] == pixel[0].tolist()


def test_missing_inputs_and_empty_folders_fail(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = _run(tmp_path, str(empty), str(tmp_path / "ghost.png"))
    err = capsys.readouterr().err
    assert code == 1
    assert f"{empty}: folder contains no image files" in err and f"{tmp_path / 'ghost.png'}: file not found" in err
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["--use-ema"],
        ["--min-pixels", "10000", "--max-pixels", "100"],
    ],
)
def test_inconsistent_flags_exit(tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(["reconstruct", str(EXAMPLES), "--config", TINY, "--out", str(tmp_path), *argv]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_batch_size_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["reconstruct", str(EXAMPLES), "--config", TINY, "--out", str(tmp_path), "--batch-size", "0"])


def test_help_documents_every_flag(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        reconstruct_parser().parse_args(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--config", "--dualvitok", "--use-ema", "--out", "--dtype", "--device", "--max-pixels",
                 "--min-pixels", "--batch-size", "--codes-format", "--seed", "IMAGES_OR_FOLDER"):
        assert flag in text


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    state = DualViTok.from_config(TINY).state_dict()
    state.pop("pixel_decoder.conv_out.weight")
    state["pixel_decoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "other.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(bad))
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code, _ = _run(tmp_path, str(EXAMPLES / "chelsea.jpg"), "--checkpoint", str(bad))
    assert code == 2
    message = err.getvalue()
    assert str(bad) in message
    assert "pixel_decoder.conv_out.weight" in message and "pixel_decoder.extra.weight" in message


def test_out_equal_to_the_input_folder_keeps_every_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--out .` on a.jpg, a.png, a_2.png: inputs untouched, three outputs, three metrics rows."""
    sources = {"a.jpg": "chelsea.jpg", "a.png": "rocket.jpg", "a_2.png": "coffee.jpg"}
    for name, source in sources.items():
        load_image(EXAMPLES / source).resize((64, 48)).save(tmp_path / name)
    (tmp_path / "photo.heic").write_bytes(b"not decoded")
    (tmp_path / "gone.png").symlink_to(tmp_path / "missing.png")
    before = {name: (tmp_path / name).read_bytes() for name in sources}
    monkeypatch.chdir(tmp_path)
    for _ in range(2):  # a rerun neither eats its own outputs nor lists them as skipped
        assert main(["reconstruct", ".", "--config", TINY, "--out", ".", "--device", "cpu"]) == 0
    assert {name: (tmp_path / name).read_bytes() for name in sources} == before
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert sorted(metrics["images"]) == sorted(sources)
    assert sorted(row["reconstruction"] for row in metrics["images"].values()) == sorted(
        f"{name}.recon.png" for name in sources
    )
    for name in sources:
        assert Image.open(tmp_path / f"{name}.recon.png").size == (64, 48)
    assert set(metrics["skipped"]) == {"photo.heic", "gone.png"}
    assert "unsupported file type '.heic'" in metrics["skipped"]["photo.heic"]
    assert metrics["skipped"]["gone.png"] == "broken or looping symbolic link"


def test_output_names_are_distinct_and_never_another_inputs_name() -> None:
    from vision_tokenizer.reconstruct import output_names

    paths = [Path("x/cat.jpg"), Path("y/cat.jpg"), Path("cat_2.jpg"), Path("a.png"), Path("b/a.png")]
    names = output_names(paths)
    assert names == ["cat.jpg", "cat_3.jpg", "cat_2.jpg", "a.png", "a_2.png"]


def test_an_output_that_would_overwrite_an_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photo = tmp_path / "a.png"
    load_image(EXAMPLES / "coffee.jpg").resize((64, 48)).save(photo)
    earlier = tmp_path / "a.png.recon.png"  # given as an input: a.png's output would replace it
    shutil.copy(photo, earlier)
    before = earlier.read_bytes()
    code = main(["reconstruct", str(photo), str(earlier), "--config", TINY, "--out", str(tmp_path), "--device", "cpu"])
    assert code == 2 and earlier.read_bytes() == before and not (tmp_path / "metrics.json").exists()
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "would overwrite the input(s)" in line and str(earlier) in line
