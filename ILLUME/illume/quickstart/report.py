"""The quick start's one-page HTML report: loss curves, images side by side, answers, timings.

Everything the page shows is copied into the report folder (`images/`, `*.png` plots), so the
folder can be zipped or opened anywhere.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from illume.quickstart.evaluation import photo_at

__all__ = ["read_metrics", "plot_curves", "write_report", "REPORT_FILE"]

REPORT_FILE = "index.html"
_TOKENIZER_CURVES = {
    "gen_loss/rec_loss": "pixel reconstruction (L2)",
    "semantic_loss/reconstruction_loss": "semantic reconstruction (cosine)",
    "gen_loss/codebook_loss": "pixel codebook",
    "semantic_loss/codebook_loss": "semantic codebook",
}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a `metrics.jsonl` file (both trainers write one)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training metrics at {path}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(rows: Sequence[Mapping[str, Any]], curves: Mapping[str, str], title: str, path: Path) -> None:
    """One PNG with a line per metric key (log scale), x = optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for key, label in curves.items():
        points = [(row["step"], row[key]) for row in rows if key in row]
        if points:
            steps, values = zip(*points)
            axis.plot(steps, values, label=label)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _mllm_curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    curves = {"loss": "all (mean over each batch)"}
    names = sorted({key for row in rows for key in row if key.startswith("loss/")})
    curves.update({key: key.removeprefix("loss/") for key in names})
    return curves


def _img(path: str, alt: str) -> str:
    return f'<img src="{html.escape(path)}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ddd; padding: 4px 8px;
vertical-align: middle; text-align: left; font-size: 14px; }
img { width: 128px; height: 128px; image-rendering: pixelated; display: block; }
img.plot { width: auto; height: auto; display: inline-block; image-rendering: auto; }
.ok { color: #070; } .bad { color: #a00; } .note { color: #555; font-size: 13px; }
"""


def write_report(
    out_dir: str | Path,
    records: Mapping[str, Mapping[str, Any]],
    timings: Mapping[str, float],
    settings: Mapping[str, Any],
) -> Path:
    """Write `out_dir/index.html` (and its plots and images) from the stages' records."""
    out_dir = Path(out_dir)
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    data, tokenizer, inference = records["data"], records["tokenizer"], records["inference"]
    res = int(settings["resolution"])

    plot_curves(
        read_metrics(tokenizer["metrics"]),
        _TOKENIZER_CURVES,
        "DualViTok training",
        out_dir / "tokenizer_loss.png",
    )
    mllm_rows = read_metrics(records["mllm"]["metrics"])
    plot_curves(mllm_rows, _mllm_curves(mllm_rows), "MLLM training", out_dir / "mllm_loss.png")

    def copy(source: Path, name: str) -> str:
        shutil.copyfile(source, images / name)
        return f"images/{name}"

    def photo(name: str, file_stem: str | None = None) -> str:
        stem = file_stem or name
        photo_at(Path(data["image_dir"]) / f"{stem}.png", res).save(images / f"photo_{stem}.png")
        return f"images/photo_{stem}.png"

    generation = inference["generation_psnr"]
    gen_rows = []
    for name, value in zip(data["photos"], generation["per_image"]):
        gen_rows.append([
            _img(photo(name), name),
            _img(copy(Path(tokenizer["reconstructions"]) / f"{name}.png", f"recon_{name}.png"), "reconstruction"),
            _img(copy(Path(inference["generated_dir"]) / f"{name}.png", f"generated_{name}.png"), "generated"),
            html.escape(data["captions"][name]),
            f"{value:.1f} dB",
        ])  # fmt: skip
    edit_rows = []
    for edit in inference["edits"]:
        stem = f"{edit['photo']}_{edit['edit']}"
        edit_rows.append([
            _img(f"images/photo_{edit['photo']}.png", edit["photo"]),
            html.escape(edit["instruction"]),
            _img(photo(edit["photo"], stem), "target"),
            _img(copy(Path(inference["edited_dir"]) / f"{stem}.png", f"edited_{stem}.png"), "output"),
            f"{edit['psnr_target']:.1f} dB / {edit['psnr_source']:.1f} dB",
        ])  # fmt: skip
    answer_rows = []
    for item in inference["answers"]:
        mark = '<span class="ok">✓</span>' if item["correct"] else '<span class="bad">✗</span>'
        answer_rows.append([
            _img(f"images/photo_{item['photo']}.png", item["photo"]), html.escape(item["question"]),
            html.escape(item["answer"]), html.escape(item["expected"] or "—"), mark,
        ])  # fmt: skip

    correct = sum(item["correct"] for item in inference["answers"])
    edit_target = sum(e["psnr_target"] for e in inference["edits"]) / max(1, len(inference["edits"]))
    edit_source = sum(e["psnr_source"] for e in inference["edits"]) / max(1, len(inference["edits"]))
    summary = [
        ["tokenizer reconstruction PSNR (photos)",
         f"{tokenizer['psnr_before']:.1f} dB untrained → {tokenizer['psnr_after']:.1f} dB after {tokenizer['steps']} steps"],
        ["generated image vs its own photo", f"{generation['matched']:.1f} dB"],
        ["generated image vs the other photos", f"{generation['other_photos']:.1f} dB"],
        ["uniform noise vs the photos", f"{generation['noise']:.1f} dB"],
        ["edit output vs target / vs unedited source", f"{edit_target:.1f} dB / {edit_source:.1f} dB"],
        ["answers equal to the training answer", f"{correct} of {len(inference['answers'])}"],
    ]  # fmt: skip
    timing_rows = [[name, f"{seconds:.1f} s"] for name, seconds in timings.items()]
    timing_rows.append(["<b>total</b>", f"<b>{sum(timings.values()):.1f} s</b>"])

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ILLUME+ quick start report</title>
<style>{_STYLE}</style></head><body>
<h1>ILLUME+ quick start</h1>
<p class="note">A tiny DualViTok and a tiny ILLUME+ MLLM trained from scratch on {len(data["photos"])} photos
at {res}×{res} pixels. The models memorise their training set: this page shows that every part of the
system works end to end, not that it generalises. Photos: scikit-image sample data (see data/LICENSES.md).</p>
<h2>Summary</h2>{_table(["measure", "value"], summary)}
<p class="note">PSNR compares {res}×{res} RGB images. The tokenizer's reconstruction PSNR bounds what a
generated image can reach; "other photos" and "noise" are what a picture scores against a photo by chance.</p>
<h2>Training</h2>
<img class="plot" src="tokenizer_loss.png" alt="tokenizer loss curves">
<img class="plot" src="mllm_loss.png" alt="MLLM loss curves">
<h2>Text to image</h2>
<p class="note">Greedy decoding, no classifier-free guidance. PSNR: generated image vs the photo.</p>
{_table(["photo", "tokenizer reconstruction", "generated from the caption", "caption", "PSNR"], gen_rows)}
<h2>Editing</h2>
<p class="note">PSNR of the output vs the target / vs the unedited source.</p>
{_table(["source", "instruction", "target", "output", "PSNR"], edit_rows)}
<h2>Understanding</h2>
{_table(["image", "question", "answer", "training answer", ""], answer_rows)}
<h2>Timings</h2>{_table(["stage", "time"], timing_rows)}
<p class="note">Stages that were reused from an earlier run show the time of the run that produced them.</p>
<h2>Settings</h2><pre>{html.escape(json.dumps(dict(settings), indent=2, default=str))}</pre>
</body></html>
"""
    path = out_dir / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    return path
