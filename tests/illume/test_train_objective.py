"""The training objective: chunked head + cross-entropy and packed rows equal the plain computation.

References are independent of the code under test: `torch.nn.functional.cross_entropy` on full
logits, the model's own transformers loss, and each sample run on its own. Training samples
(with images) are the golden `mllm_tiny_train_*` cases, discovered by glob.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from illume.data.collator import SupervisedCollator
from illume.train.loss import liger_available, linear_cross_entropy, resolve_backend
from illume.train.objective import ObjectiveConfig, empty_index, training_objective
from illume.train.train import run
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from safetensors.torch import load_file

from tests.illume.test_mllm_golden import build_golden_model
from tests.illume.test_train import _config, tiny_llm  # noqa: F401  (fixture)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 7, 16, 1000])
def test_chunked_loss_and_gradients_equal_full_logits(chunk_size: int, with_bias: bool) -> None:
    torch.manual_seed(chunk_size)
    n, hidden_size, vocab = 53, 24, 301
    hidden = torch.randn(n, hidden_size, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(vocab, hidden_size).requires_grad_()
    bias = torch.randn(vocab).requires_grad_() if with_bias else None
    labels = torch.randint(0, vocab, (n,))
    labels[2:5] = IGNORE_INDEX
    labels[16:32] = IGNORE_INDEX  # a whole chunk of 16 without targets
    params = [hidden, weight] + ([bias] if with_bias else [])

    got = linear_cross_entropy(hidden, weight, labels, bias, backend="chunked", chunk_size=chunk_size)
    got_grads = torch.autograd.grad(got.total * 0.7, params)

    logits = F.linear(hidden, weight, bias)
    want = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="none")
    want_grads = torch.autograd.grad(want.sum() * 0.7, params)
    assert got.count == int((labels != IGNORE_INDEX).sum()) == n - 19
    torch.testing.assert_close(got.total, want.sum(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.per_position, want.detach(), rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_no_gradients_are_computed_without_grad_mode() -> None:
    weight = torch.randn(11, 4, requires_grad=True)
    with torch.no_grad():
        out = linear_cross_entropy(torch.randn(5, 4), weight, torch.arange(5), backend="chunked", chunk_size=2)
    assert not out.total.requires_grad and out.count == 5


def _training_items(golden: Path) -> list[dict]:
    items = []
    for path in sorted(golden.glob("mllm_tiny_train_*.safetensors")):
        tensors = load_file(path)
        mask = tensors["attention_mask"][0].bool()
        # Small versions of the images keep the test fast; each sample gets a different size.
        side = (48 + 16 * len(items), 64)
        images = [
            F.interpolate(tensors[key].permute(2, 0, 1)[None].float() / 127.5 - 1.0, size=side, mode="area")
            for key in sorted(k for k in tensors if k.startswith("images."))
        ]
        items.append(
            {
                "input_ids": tensors["input_ids"][0][mask],
                "labels": tensors["labels"][0][mask],
                "images": images,
                "image_sizes": [tuple(i.shape[-2:]) for i in images],
                "dataset_name": path.stem,
            }
        )
    # A text-only sample too: packing must also place samples that bring no image.
    text = items[0]["input_ids"][items[0]["input_ids"] != IMAGE_TOKEN_INDEX][:40]
    items.append({"input_ids": text, "labels": text.clone(), "images": [], "image_sizes": [], "dataset_name": "text"})
    return items


@pytest.fixture(scope="module")
def model(golden: Path):
    return build_golden_model(golden).train()


@pytest.fixture(scope="module")
def items(golden: Path) -> list[dict]:
    found = _training_items(golden)
    assert sum(bool(i["images"]) for i in found) >= 2, "golden folder lacks mllm_tiny_train_* image cases"
    return found


def _batch(items: list[dict]) -> dict:
    batch = SupervisedCollator(pad_token_id=320)(items)
    batch.pop("dataset_names")
    return batch


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _assert_grad_close(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """fp32 sums over thousands of positions: error ~1e-6 of the tensor's scale (the tied embedding/head
    gets them all) or ~1e-5 absolute (conv biases before a GroupNorm, whose true gradient is 0)."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-6 * float(want.abs().max()) + 1e-5, msg=name)


def _objective_step(model, batch: dict, config: ObjectiveConfig, scale: str = "mean"):
    with training_objective(model, config) as step:
        loss = model(**batch, logits_to_keep=empty_index(torch.device("cpu"))).loss
    (loss if scale == "mean" else step.tokens.total).backward()
    return loss.detach(), step


def test_objective_equals_the_models_own_loss_and_gradients(model, items) -> None:
    batch = _batch(items)
    want = model(**batch).loss
    want.backward()
    want_grads = _grads(model)
    got, step = _objective_step(model, batch, ObjectiveConfig(backend="chunked", chunk_size=96))
    got_grads = _grads(model)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name, grad in want_grads.items():
        _assert_grad_close(got_grads[name], grad, name)
    assert step.sample_loss.shape == (len(items),)


def test_packed_batch_equals_each_sample_on_its_own(model, items) -> None:
    alone_losses, alone_grads = [], []
    for item in items:
        _, step = _objective_step(model, _batch([item]), ObjectiveConfig(backend="plain"), scale="sum")
        alone_losses.append(step.sample_loss[0])
        alone_grads.append(_grads(model))
    _, packed = _objective_step(
        model, _batch(items), ObjectiveConfig(backend="chunked", chunk_size=128, packing=True), scale="sum"
    )
    packed_grads = _grads(model)
    torch.testing.assert_close(packed.sample_loss, torch.stack(alone_losses), rtol=1e-5, atol=1e-6)
    for name, grad in packed_grads.items():
        _assert_grad_close(grad, sum(g[name] for g in alone_grads if name in g), name)


def test_backend_choice_follows_device_and_installation() -> None:
    assert resolve_backend("auto", torch.device("cpu")) == "chunked"  # liger is CUDA-only
    if not liger_available():
        with pytest.raises(ValueError, match="liger-kernel"):
            resolve_backend("liger", torch.device("cpu"))
        assert resolve_backend("auto", torch.device("cuda")) == "chunked"
    with pytest.raises(ValueError, match="auto, chunked, liger, plain"):
        resolve_backend("fused", torch.device("cpu"))


@pytest.mark.slow
def test_packed_training_run_logs_the_same_losses(tiny_llm: Path, tmp_path: Path) -> None:  # noqa: F811
    """Two samples per micro-batch through the real trainer: packed rows change nothing but the layout."""
    logs = {}
    for packing in (False, True):
        out = tmp_path / f"packing_{packing}"
        cfg = _config(tiny_llm, tmp_path, **{
            "training_args.output_dir": str(out), "training_args.per_device_train_batch_size": 2,
            "training_args.max_steps": 3, "training_args.packing": packing,
            "training_args.cross_entropy_chunk_size": 64,
        })  # fmt: skip
        run(cfg)
        logs[packing] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    unpacked = [r for r in logs[False] if "loss" in r]
    packed = [r for r in logs[True] if "loss" in r]
    assert [r["step"] for r in packed] == [1, 2, 3]
    for a, b in zip(packed, unpacked):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3), (a, b)
