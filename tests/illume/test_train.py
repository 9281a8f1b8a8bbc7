"""MLLM training: per-module learning rates, stage freezing, and real torchrun runs on CPU.

The tiny LLM is a random 2-layer Qwen2 with the golden tiny ILLUME tokenizer (codebooks 256/768,
matching `configs/tiny/dualvitok_tiny.py` and the bundled example codes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import illume.model  # noqa: F401  (registers the Auto classes)
import pytest
import torch
from illume.train.arguments import build_training_arguments
from illume.train.model_builder import build_model_and_tokenizer
from illume.train.train import resolve_path
from illume.train.trainer import ILLUMETrainer
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM
from vision_tokenizer.utils.config import load_config

from tests.conftest import REPO_ROOT, golden_dir

TINY_CONFIG = REPO_ROOT / "configs" / "tiny" / "illume_debug_tiny.py"
TRAIN_SCRIPT = REPO_ROOT / "ILLUME" / "illume" / "train" / "train.py"


def write_tiny_llm(folder: Path) -> Path:
    """An extended tiny Qwen2 checkpoint: random weights, the golden tiny ILLUME tokenizer."""
    shutil.copytree(golden_dir() / "mllm_tiny_tokenizer", folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=1447, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6,
        pad_token_id=320, eos_token_id=322, max_position_embeddings=4096,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llm(tmp_path_factory.mktemp("tiny_llm"))


def _config(tiny_llm: Path, tmp_path: Path, **overrides):
    values = {
        "model_args.language_model.pretrained_model_name_or_path": str(tiny_llm),
        "training_args.output_dir": str(tmp_path / "out"),
        **overrides,
    }
    return load_config(TINY_CONFIG, values)


def _trainer(cfg) -> ILLUMETrainer:
    args = build_training_arguments(cfg.training_args, resolve_path)
    built = build_model_and_tokenizer(cfg.model_args, args.model_max_length, resolve=resolve_path)
    return ILLUMETrainer(model=built.model, args=args, vq_model_config=built.vq_model_config)


def test_each_module_learning_rate_reaches_the_optimizer(tiny_llm: Path, tmp_path: Path) -> None:
    # The stage-3 situation that the official trainer got wrong: a tower rate without a projector rate.
    cfg = _config(
        tiny_llm,
        tmp_path,
        **{
            "training_args.learning_rate": 1e-3,
            "training_args.mm_projector_lr": None,
            "training_args.mm_vision_tower_lr": 1e-5,
            "training_args.vision_token_lr": 3e-4,
            "training_args.weight_decay": 0.1,
        },
    )
    trainer = _trainer(cfg)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups for p in g["params"]}
    expected = {"model.vision_tower.": 1e-5, "model.mm_projector.": 1e-3, "model.embed_tokens.": 3e-4}
    decay_names = set(trainer.get_decay_parameter_names(trainer.model))
    seen = set()
    for name, param in trainer.model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in lr_of, name
            continue
        prefix = next((p for p in expected if name.startswith(p)), None)
        lr, decay = lr_of[id(param)]
        assert lr == pytest.approx(expected.get(prefix, 1e-3)), name
        assert decay == (0.1 if name in decay_names else 0.0), name
        seen.add(prefix)
    assert seen == {*expected, None}
    trainer.lr_scheduler.step()  # constant schedule: the rates stay what the config says
    assert sorted({g["lr"] for g in trainer.optimizer.param_groups}) == pytest.approx([1e-5, 3e-4, 1e-3])


def test_stage_flags_freeze_the_right_parameters(tiny_llm: Path, tmp_path: Path) -> None:
    cfg = _config(
        tiny_llm,
        tmp_path,
        **{
            "model_args.language_model.trainable": False,
            "model_args.mm_projector.trainable": False,
            "model_args.unfreeze_text_embedding": False,
            "model_args.mm_vision_tower.tune_vit_from_layer": 1,
        },
    )
    model = _trainer(cfg).model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    tower = "model.vision_tower."
    assert f"{tower}semantic_encoder.blocks.1.mlp.fc1.weight" in trainable
    assert f"{tower}semantic_encoder.merger.mlp.0.weight" in trainable
    assert f"{tower}pixel_encoder.conv_in.weight" in trainable
    assert f"{tower}semantic_encoder.blocks.0.mlp.fc1.weight" not in trainable
    assert f"{tower}semantic_encoder.patch_embed.proj.weight" not in trainable
    assert not any(n.startswith(f"{tower}pixel_encoder.down") for n in trainable)
    assert not any(n.startswith("model.mm_projector.") or n.startswith("model.layers.") for n in trainable)
    assert "model.embed_tokens.weight" in trainable  # unfreeze_vision_embedding


def test_vision_embedding_flag_trains_only_the_new_rows(tiny_llm: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_llm, tmp_path, **{"model_args.unfreeze_text_embedding": False})
    trainer = _trainer(cfg)
    model = trainer.model
    ids = torch.tensor([[5, 40, 330, 350, 700, 1000]])  # text ids < 342, then ILLUME ids
    model(input_ids=ids, labels=ids).loss.backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad[:342].abs().sum() == 0
    assert grad[342:].abs().sum() > 0


def test_unsupported_training_switches_are_errors(tmp_path: Path) -> None:
    lora = build_training_arguments({"output_dir": str(tmp_path), "lora_enable": True, "lora_r": 8}, resolve_path)
    assert lora.lora_enable and lora.lora_r == 8 and lora.lora_bias == "none"  # LoRA: tests/illume/test_train_lora.py
    with pytest.raises(ValueError, match="bits"):
        build_training_arguments({"output_dir": str(tmp_path), "bits": 4}, resolve_path)
    with pytest.raises(ValueError, match="output_dir"):
        build_training_arguments({"learning_rate": 1e-3}, resolve_path)
    args = build_training_arguments(
        {"output_dir": "x", "warmup_ratio": 0.03, "mm_vision_tower_lr": 2e-6}, resolve_path
    )
    assert args.warmup_steps == pytest.approx(0.03) and args.mm_vision_tower_lr == 2e-6
    assert Path(args.output_dir) == REPO_ROOT / "x"


def _torchrun(args: list[str], env_port: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(env_port),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run(command + args, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def _losses(output_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (output_dir / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_two_processes_learns_resumes_exactly_and_saves_a_loadable_model(
    tiny_llm: Path, tmp_path: Path
) -> None:
    common = [
        str(TINY_CONFIG),
        f"--model_args.language_model.pretrained_model_name_or_path={tiny_llm}",
        "--training_args.num_train_epochs=3",
        "--training_args.save_steps=4",
        "--training_args.save_total_limit=5",
    ]
    full = tmp_path / "full"
    _torchrun([str(TRAIN_SCRIPT), *common, f"--training_args.output_dir={full}"], 29631)
    logs = _losses(full)
    assert [r["step"] for r in logs] == list(range(1, 10))  # 5 samples, 2 ranks: 3 steps per epoch
    for name in ("examples_understanding", "examples_text", "examples_generation", "examples_editing"):
        series = [r[f"loss/{name}"] for r in logs if f"loss/{name}" in r]
        assert len(series) >= 2 and series[-1] < series[0] - 0.1, (name, series)

    # Resume from the step-4 checkpoint (mid-epoch) in a fresh folder, via `python -m`.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-4", resumed / "checkpoint-4")
    _torchrun(["-m", "illume.train.train", *common, f"--training_args.output_dir={resumed}"], 29632)
    after = _losses(resumed)
    assert [r["step"] for r in after] == list(range(5, 10))
    for a, b in zip(after, logs[4:]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
        assert a["learning_rate"] == pytest.approx(b["learning_rate"])

    model = AutoModelForCausalLM.from_pretrained(full)
    reference = AutoModelForCausalLM.from_pretrained(resumed)
    for (name, p), (_, q) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-5), name
    # The saved folder names the released architecture; the Auto class loads it as that class (or
    # as its generation-capable subclass once `illume.hf` has registered it).
    assert json.loads((full / "config.json").read_text())["architectures"] == ["IllumeQwen2ForCausalLM"]
    assert isinstance(model, illume.model.IllumeQwen2ForCausalLM)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([[321, 84, 82, -200, 322]]), images=[torch.zeros(1, 3, 64, 64)])
    assert out.logits.shape[-1] == 1447 and torch.isfinite(out.logits).all()


def test_entry_point_help_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(TRAIN_SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "model_args" in result.stdout


def _deepspeed_unavailable_reason() -> str | None:
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # deepspeed raises various errors when it cannot set itself up
        return f"deepspeed is not importable here ({type(err).__name__}: {err}); pip install deepspeed"
    return None


_NEEDS_DEEPSPEED = pytest.mark.skipif(
    _deepspeed_unavailable_reason() is not None, reason=str(_deepspeed_unavailable_reason())
)


def _deepspeed_epoch(tiny_llm: Path, out: Path, stage: int, port: int) -> list[dict]:
    """One epoch of the tiny config under `ILLUME/scripts/zero{stage}.json`; the logged losses.

    Steps 1 and 2 give at least one rank a batch without an input image (pure text, text-to-image),
    which ZeRO-3 only survives because every rank still runs the tower and projector.
    """
    _torchrun(
        [
            str(TRAIN_SCRIPT),
            str(TINY_CONFIG),
            f"--model_args.language_model.pretrained_model_name_or_path={tiny_llm}",
            f"--training_args.output_dir={out}",
            "--training_args.num_train_epochs=1",
            f"--training_args.deepspeed=ILLUME/scripts/zero{stage}.json",
        ],
        port,
    )
    logs = _losses(out)
    assert [r["step"] for r in logs] == [1, 2, 3]
    assert (out / "checkpoint-3" / "global_step3").is_dir()  # DeepSpeed's own optimizer shards
    return logs


@pytest.fixture(scope="module")
def zero2_run(tiny_llm: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("zero2")
    return out, _deepspeed_epoch(tiny_llm, out, 2, 29633)


@pytest.mark.distributed
@pytest.mark.slow
@_NEEDS_DEEPSPEED
def test_torchrun_with_deepspeed_zero2_on_cpu(zero2_run: tuple[Path, list[dict]]) -> None:
    out, _ = zero2_run
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.mm_vision_tower["vq_config"] == "dualvitok_config.json"


@pytest.mark.distributed
@pytest.mark.slow
@_NEEDS_DEEPSPEED
def test_torchrun_with_deepspeed_zero3_on_cpu_matches_zero2(
    tiny_llm: Path, tmp_path: Path, zero2_run: tuple[Path, list[dict]]
) -> None:
    """Partitioned parameters change where the weights live, not the arithmetic: same losses, same model."""
    zero2_out, zero2_logs = zero2_run
    out = tmp_path / "zero3"
    logs = _deepspeed_epoch(tiny_llm, out, 3, 29634)
    for got, want in zip(logs, zero2_logs):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), (got, want)
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), (got, want)
    # stage3_gather_16bit_weights_on_model_save: the saved folder holds whole tensors, not shards.
    model = AutoModelForCausalLM.from_pretrained(out).state_dict()
    reference = AutoModelForCausalLM.from_pretrained(zero2_out).state_dict()
    assert model.keys() == reference.keys()
    for name, tensor in model.items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-4, rtol=1e-4, msg=name)


def _two_size_config(tmp_path: Path, records: list[dict], overrides: str = "") -> Path:
    """The tiny config on `records` over a 64x96 `wide.png` and a 96x64 `tall.png`."""
    from PIL import Image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "jsonl").mkdir()
    generator = torch.Generator().manual_seed(0)
    for name, (height, width) in {"wide.png": (64, 96), "tall.png": (96, 64)}.items():
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(data / "images" / name)
    (data / "jsonl" / "0000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    meta = data / "meta.json"
    entry = {"root": str(data), "image_dir": str(data / "images"), "annotation_dir": str(data / "jsonl"),
             "tokenizer_inference": False}  # fmt: skip
    meta.write_text(json.dumps({"two_sizes": entry}))
    config = tmp_path / "two_sizes.py"
    config.write_text(
        f"_base_ = [{str(TINY_CONFIG)!r}]\n"
        f"data_args = dict(meta_data_info_list=[dict(meta_configs=[{str(meta)!r}], dataset_dtype='DefaultDataset', "
        "data_infos=dict(two_sizes=-1), image_aspect_ratio='anyres_dualvitok')])\n" + overrides
    )
    return config


def _zero3_args(config: Path, tiny_llm: Path, out: Path) -> list[str]:
    return [str(TRAIN_SCRIPT), str(config), f"--model_args.language_model.pretrained_model_name_or_path={tiny_llm}",
            f"--training_args.output_dir={out}", "--training_args.num_train_epochs=1",
            "--training_args.deepspeed=ILLUME/scripts/zero3.json"]  # fmt: skip


def _question(images: list[str]) -> dict:
    return {"images": images, "conversations": [
        {"from": "human", "value": "<image>\n" * len(images) + "Describe it."}, {"from": "gpt", "value": "Colours."}]}  # fmt: skip


@pytest.mark.distributed
@pytest.mark.slow
@_NEEDS_DEEPSPEED
def test_zero3_stops_with_a_clear_error_when_ranks_would_gather_differently(tiny_llm: Path, tmp_path: Path) -> None:
    """One rank's sample holds two input images of different sizes (two pixel-encoder runs, the ViT's
    per-image path), the other's one image: their ZeRO-3 gathers would differ. No sampler can put
    one sample's own images in one size; the trainer says so at the first such step instead of
    DeepSpeed failing later on a trace mismatch."""
    config = _two_size_config(tmp_path, [_question(["wide.png", "tall.png"]), _question(["tall.png"])])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29635",
               *_zero3_args(config, tiny_llm, tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode != 0
    output = result.stderr + result.stdout
    assert "ZeRO-3: ranks would run the pixel encoder [2, 1] times" in output or (
        "ZeRO-3: ranks would run the pixel encoder [1, 2] times" in output
    ), result.stderr[-3000:]
    assert "one sample's own input images differ in size" in output


@pytest.mark.distributed
@pytest.mark.slow
@_NEEDS_DEEPSPEED
def test_zero3_with_batches_of_two_trains_on_mixed_sizes_through_size_buckets(tiny_llm: Path, tmp_path: Path) -> None:
    """Two samples per device over 64x96, 96x64 and text-only samples: the size-bucketed sampler
    gives every micro-batch one input size, so all ranks gather alike and the epoch trains (with the
    plain random order this data stops at step 1 on the trainer's check)."""
    records = [_question(["wide.png"])] * 3 + [_question(["tall.png"])] * 3
    records += [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}] * 2
    config = _two_size_config(tmp_path, records, "training_args = dict(per_device_train_batch_size=2)\n")
    out = tmp_path / "out"
    _torchrun(_zero3_args(config, tiny_llm, out), 29636)
    logs = _losses(out)
    assert [r["step"] for r in logs] == [1, 2]  # 8 samples, 2 per device on 2 ranks
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in logs)
