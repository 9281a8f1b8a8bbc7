"""The image-input path beyond the golden cases: batching, padding, several images, bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from illume.model import IllumeQwen2ForCausalLM
from illume.vocab import IGNORE_INDEX, IMAGE_TOKEN_INDEX, ImageGrid

from tests.illume.test_mllm_golden import build_golden_model

ATOL = RTOL = 1e-4
PAD = 320  # <|endoftext|> of the tiny tokenizer


@pytest.fixture(scope="module")
def model(golden: Path) -> IllumeQwen2ForCausalLM:
    return build_golden_model(golden)


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _single(model, ids: list[int], images: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), images=images or None).logits[0]


def _batch(ids: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, ids))
    rows, masks = [], []
    for seq in ids:
        pad = [PAD] * (width - len(seq))
        rows.append(pad + seq if side == "left" else seq + pad)
        ones, zeros = [1] * len(seq), [0] * len(pad)
        masks.append(zeros + ones if side == "left" else ones + zeros)
    return torch.tensor(rows), torch.tensor(masks)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_single_samples(model, side: str, monkeypatch) -> None:
    """Two samples, three images of three sizes, padding on either side: same logits as one by one."""
    square, small, tall = _image(64, 64, 0), _image(64, 96, 1), _image(96, 32, 2)
    samples = [
        ([321, 50, IMAGE_TOKEN_INDEX, 51, 52, IMAGE_TOKEN_INDEX, 53], [square, small]),
        ([321, 60, 61, IMAGE_TOKEN_INDEX, 62], [tall]),
    ]
    expected = [_single(model, ids, imgs) for ids, imgs in samples]
    monkeypatch.setattr(model.config, "tokenizer_padding_side", side)
    input_ids, mask = _batch([s[0] for s in samples], side)
    with torch.no_grad():
        merged = model.model.prepare_multimodal_inputs(input_ids, mask, None, [square, small, tall])
        logits = model(input_ids=input_ids, attention_mask=mask, images=[square, small, tall]).logits
    lengths = merged.attention_mask.sum(1).tolist()
    assert lengths == [len(e) for e in expected]
    for row, (want, n) in enumerate(zip(expected, lengths)):
        real = merged.attention_mask[row].bool()
        assert real.nonzero().flatten().tolist() == (
            list(range(logits.shape[1] - n, logits.shape[1])) if side == "left" else list(range(n))
        )
        assert merged.position_ids[row][real].tolist() == list(range(n))
        torch.testing.assert_close(logits[row][real], want, atol=ATOL, rtol=RTOL)


def test_block_lengths_follow_the_grammar(model) -> None:
    image = _image(64, 96, 3)
    ids = torch.tensor([[321, IMAGE_TOKEN_INDEX, 50]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 50]])
    with torch.no_grad():
        merged = model.model.prepare_multimodal_inputs(ids, None, labels, [image])
    grid = ImageGrid.for_resolution(64, 96)
    assert grid == ImageGrid((2, 3), (4, 6))
    assert merged.inputs_embeds.shape[1] == 2 + grid.num_tokens
    assert merged.labels[0].tolist() == [IGNORE_INDEX] * (1 + grid.num_tokens) + [50]


def test_placeholder_image_for_marker_free_sample_changes_nothing(model) -> None:
    ids = [321, 50, 51, 52]
    with torch.no_grad():
        plain = model(input_ids=torch.tensor([ids])).logits
        with_placeholder = model(input_ids=torch.tensor([ids]), images=[torch.zeros(1, 3, 256, 256)]).logits
    assert torch.equal(plain, with_placeholder)


def test_truncation_to_model_max_length(model, monkeypatch) -> None:
    ids = torch.tensor([[321, IMAGE_TOKEN_INDEX, 50, 51]])
    image = _image(64, 96, 5)
    with torch.no_grad():
        full = model.model.prepare_multimodal_inputs(ids, None, ids.clone(), [image])
        monkeypatch.setattr(model.config, "tokenizer_model_max_length", 30)
        cut = model.model.prepare_multimodal_inputs(ids, None, ids.clone(), [image])
    assert full.inputs_embeds.shape[1] == 3 + 42 and cut.inputs_embeds.shape[1] == 30
    assert torch.equal(cut.inputs_embeds, full.inputs_embeds[:, :30])
    assert torch.equal(cut.labels, full.labels[:, :30])


@pytest.mark.parametrize(
    ("ids", "num_images", "message"),
    [
        ([321, IMAGE_TOKEN_INDEX, 50, IMAGE_TOKEN_INDEX], 1, "1 image.* for 2 <image> marker"),
        ([321, IMAGE_TOKEN_INDEX, 50], 3, "3 image.* for 1 <image> marker"),
        ([321, 50], 2, "2 image.* for 0 <image> marker"),
    ],
)
def test_marker_and_image_counts_must_agree(model, ids: list[int], num_images: int, message: str) -> None:
    images = [_image(32, 32, i) for i in range(num_images)]
    with pytest.raises(ValueError, match=message):
        model(input_ids=torch.tensor([ids]), images=images)


def test_markers_without_images(model) -> None:
    with pytest.raises(ValueError, match="no images were given"):
        model(input_ids=torch.tensor([[321, IMAGE_TOKEN_INDEX]]))
    with pytest.raises(ValueError, match="no images were given"):
        model.generate(torch.tensor([[321, IMAGE_TOKEN_INDEX]]), max_new_tokens=1)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((1, 3, 784, 784), r"614656 pixels is outside the tower's \[1024, 589824\]"),
        ((1, 3, 16, 32), "512 pixels is outside"),
        ((1, 3, 40, 32), "not a multiple of 16"),
        ((1, 1, 32, 32), r"expected \[1, 3, H, W\]"),
    ],
)
def test_bad_images_are_rejected(model, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model(input_ids=torch.tensor([[321, IMAGE_TOKEN_INDEX]]), images=[torch.zeros(shape)])


def test_generate_returns_new_tokens_of_greedy_decoding(model) -> None:
    ids = torch.tensor([[321, 50, IMAGE_TOKEN_INDEX, 51, 52]])
    image = _image(64, 96, 4)
    generated = model.generate(ids, images=[image], max_new_tokens=3, do_sample=False)
    with torch.no_grad():
        embeds = model.model.prepare_multimodal_inputs(ids, None, None, [image]).inputs_embeds
        expected = []
        for _ in range(3):
            token = model(inputs_embeds=embeds).logits[:, -1].argmax(-1)
            expected.append(int(token))
            embeds = torch.cat([embeds, model.model.embed_tokens(token)[:, None]], dim=1)
    assert generated.tolist() == [expected]


def test_tune_and_freeze_follow_stage3_rules(golden: Path) -> None:
    tower = build_golden_model(golden).model.vision_tower
    tower.tune(tune_vit_from_layer=1)
    trainable = {name for name, p in tower.named_parameters() if p.requires_grad}
    assert "semantic_encoder.blocks.1.mlp.fc1.weight" in trainable
    assert "semantic_encoder.blocks.0.mlp.fc1.weight" not in trainable
    assert "semantic_encoder.patch_embed.proj.weight" not in trainable
    assert {n for n in trainable if n.startswith("semantic_encoder.merger.")}
    assert "pixel_encoder.conv_in.weight" in trainable and "pixel_encoder.conv_out.weight" in trainable
    assert not {n for n in trainable if n.startswith("pixel_encoder.down.")}
    tower.tune(None)
    assert all(p.requires_grad for p in tower.parameters())
    tower.freeze()
    assert not any(p.requires_grad for p in tower.parameters()) and not tower.training


def test_gradients_reach_tower_projector_and_embeddings(model) -> None:
    trainee = copy.deepcopy(model).train()
    ids = torch.tensor([[321, IMAGE_TOKEN_INDEX, 50, 51]])
    out = trainee(input_ids=ids, labels=ids.clone(), images=[_image(64, 64, 6)])
    out.loss.backward()
    for name in (
        "model.vision_tower.semantic_encoder.merger.mlp.0.weight",
        "model.vision_tower.pixel_encoder.conv_out.weight",
        "model.mm_projector.projector_1.0.weight",
        "model.mm_projector.projector_2.2.weight",
        "model.embed_tokens.weight",
    ):
        grad = trainee.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_tower_in_another_precision_than_the_llm(model) -> None:
    """Training keeps the tower in fp32 next to a bf16 LLM; features are cast on the way in."""
    mixed = copy.deepcopy(model).to(torch.bfloat16)
    mixed.model.vision_tower.float()
    ids = torch.tensor([[321, IMAGE_TOKEN_INDEX, 50]])
    image = _image(64, 64, 7)
    with torch.no_grad():
        low = mixed(input_ids=ids, images=[image]).logits
        full = model(input_ids=ids, images=[image]).logits
    assert low.dtype == torch.bfloat16
    assert torch.corrcoef(torch.stack([low.float().flatten(), full.flatten()]))[0, 1] > 0.99


def _call_order(model, run) -> list[str]:
    """Names of the top-level modules (tower, projector, embeddings, first decoder layer) as they run."""
    watched = {
        "tower": model.model.vision_tower,
        "projector": model.model.mm_projector,
        "embed": model.model.embed_tokens,
        "decoder": model.model.layers[0],
    }
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda *_, n=n: order.append(n)) for n, m in watched.items()]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return order


@pytest.mark.parametrize("placeholder", [False, True])
def test_image_less_training_step_runs_the_tower_like_an_image_step(model, placeholder: bool) -> None:
    """Ranks must run the same modules in the same order (ZeRO-3) and grad every parameter (DDP)."""
    trainee = copy.deepcopy(model).train()
    ids = torch.tensor([[321, 50, 51, 52]])
    images = [torch.zeros(1, 3, 32, 32)] if placeholder else None
    with torch.no_grad():
        expected = model(input_ids=ids, labels=ids.clone()).loss

    outputs = []
    order = _call_order(
        trainee, lambda: outputs.append(trainee(input_ids=ids, labels=ids.clone(), images=images))
    )
    image_order = _call_order(
        trainee,
        lambda: trainee(input_ids=torch.tensor([[321, IMAGE_TOKEN_INDEX, 50]]), images=[_image(32, 32, 8)]),
    )
    assert order == image_order == ["tower", "projector", "embed", "decoder"]
    loss = outputs[0].loss
    assert torch.equal(loss.detach(), expected)  # the idle term adds exactly zero
    loss.backward()
    for name, param in trainee.named_parameters():
        assert param.grad is not None, name
        if name.startswith(("model.vision_tower.", "model.mm_projector.")):
            assert param.grad.abs().sum() == 0, name


def test_idle_tower_input_is_the_smallest_image(model) -> None:
    tower = model.model.vision_tower
    out = tower.encode_placeholder()
    assert out.grids == [ImageGrid((1, 1), (1, 2))]
    assert [t.shape[0] for t in out.semantic + out.pixel] == [1, 2]
    assert model.model.idle_vision_term().item() == 0.0


def test_inference_never_runs_the_idle_tower(model) -> None:
    ids = torch.tensor([[321, 50, 51]])
    trainee = copy.deepcopy(model).train()
    with torch.no_grad():
        assert _call_order(trainee, lambda: trainee(input_ids=ids)) == ["embed", "decoder"]
    assert _call_order(model, lambda: model(input_ids=ids)) == ["embed", "decoder"]  # eval mode
    assert (
        _call_order(model, lambda: model.generate(ids, max_new_tokens=2, do_sample=False)).count("tower") == 0
    )
