"""ViT preprocessing (resolution table, patch layout) and the Qwen2-VL ViT / extra blocks."""

from __future__ import annotations

import json

import pytest
import torch
from vision_tokenizer.models.semantic import SemanticDecoder, SemanticEncoder, rows_to_maps
from vision_tokenizer.models.vit import (
    build_vit,
    merge_window_position_ids,
    raster_position_ids,
    vit_config,
    vit_features,
)
from vision_tokenizer.models.vit_input import (
    CLIP_MEAN,
    CLIP_STD,
    RESOLUTION_MAPPING,
    prepare_vit_input,
    semantic_grid_size,
    vit_target_size,
)

from tests.conftest import golden_dir

TINY_VIT = dict(
    depth=2,
    embed_dim=32,
    hidden_size=96,
    hidden_act="quick_gelu",
    mlp_ratio=4,
    num_heads=2,
    in_channels=3,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)


def test_resolution_mapping_matches_reference():
    entries = json.loads((golden_dir() / "resolution_mapping.json").read_text())["entries"]
    reference = {tuple(e["input_hw"]): tuple(e["vit_hw"]) for e in entries}
    assert RESOLUTION_MAPPING == reference
    for entry in entries:
        assert semantic_grid_size(*entry["input_hw"]) == tuple(entry["semantic_tokens_hw"])


@pytest.mark.parametrize(
    ("size", "target"),
    [((500, 300), (476, 280)), ((20, 20), (28, 28)), ((496, 496), (476, 476)), ((256, 256), (252, 252))],
)
def test_vit_target_size(size, target):
    assert vit_target_size(*size) == target


def test_patch_rows_follow_merge_windows():
    """Row (window hb, wb; inner k, l) holds patch (2hb+k, 2wb+l) laid out (channel, frame, y, x)."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 56, 84) * 2 - 1  # already a multiple of 28: no resize
    patches, grid = prepare_vit_input(image)
    assert grid.tolist() == [[1, 4, 6]] and patches.shape == (24, 1176)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    pixels = (((image[0] + 1) / 2).clamp(0, 1) - mean) / std
    windows_per_row = 6 // 2
    for hb, wb, k, col in [(0, 0, 0, 0), (0, 1, 1, 0), (1, 2, 1, 1), (1, 0, 0, 1)]:
        row = (hb * windows_per_row + wb) * 4 + k * 2 + col
        y, x = (2 * hb + k) * 14, (2 * wb + col) * 14
        patch = pixels[:, y : y + 14, x : x + 14]
        expected = torch.stack([patch, patch], dim=1).reshape(-1)  # the frame is duplicated
        torch.testing.assert_close(patches[row], expected)


def test_resize_is_antialiased_bicubic_and_clamped():
    image = torch.linspace(-1, 1, 256 * 256).reshape(1, 1, 256, 256).repeat(1, 3, 1, 1)
    patches, grid = prepare_vit_input(image)
    assert grid.tolist() == [[1, 18, 18]]
    unit = torch.nn.functional.interpolate(
        (image + 1) / 2, size=(252, 252), mode="bicubic", align_corners=False, antialias=True
    ).clamp(0, 1)
    first = (unit[0, :, :14, :14] - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(
        3, 1, 1
    )
    torch.testing.assert_close(patches[0], torch.stack([first, first], dim=1).reshape(-1))


def test_list_of_sizes_equals_each_alone():
    torch.manual_seed(0)
    a, b = torch.rand(1, 3, 64, 96) * 2 - 1, torch.rand(3, 120, 60) * 2 - 1
    patches, grid = prepare_vit_input([a, b])
    pa, ga = prepare_vit_input(a)
    pb, gb = prepare_vit_input(b.unsqueeze(0))
    assert torch.equal(patches, torch.cat([pa, pb])) and torch.equal(grid, torch.cat([ga, gb]))


def test_bad_images_raise():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        prepare_vit_input(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match="image 1"):
        prepare_vit_input([torch.zeros(3, 64, 64), torch.zeros(1, 4, 64, 64)])
    with pytest.raises(ValueError, match="no images"):
        prepare_vit_input([])


def test_vit_config_resolves_names_and_dicts():
    full = vit_config("Emova-ollm/qwen2vit600m")
    assert (full.depth, full.embed_dim, full.hidden_size, full.num_heads, full.hidden_act) == (
        32,
        1280,
        3584,
        16,
        "quick_gelu",
    )
    assert vit_config(TINY_VIT).embed_dim == 32
    with pytest.raises(ValueError, match="built-in"):
        vit_config("Qwen/some-other-vit")
    with pytest.raises(ValueError, match="num_layers"):
        vit_config({**TINY_VIT, "num_layers": 3})


def test_vit_keeps_images_apart():
    """Two images in one call give exactly what each gives alone (attention never crosses images)."""
    torch.manual_seed(0)
    vit = build_vit(vit_config(TINY_VIT)).eval()
    a, b = torch.rand(1, 3, 56, 56) * 2 - 1, torch.rand(1, 3, 84, 56) * 2 - 1
    with torch.no_grad():
        together = vit_features(vit, *prepare_vit_input([a, b]))
        alone = torch.cat([vit_features(vit, *prepare_vit_input(x)) for x in (a, b)])
    assert together.shape == (4 + 6, 96)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_raster_positions():
    assert raster_position_ids([(2, 3)]).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]


def test_extra_blocks_use_16_heads_and_batch_like_single_images():
    torch.manual_seed(0)
    encoder = SemanticEncoder(vit_config(TINY_VIT), embed_dim=64, z_channels=8, num_blocks=2).eval()
    assert all(block.attn.num_heads == 16 and block.attn.head_dim == 4 for block in encoder.blocks)
    decoder = SemanticDecoder(z_channels=8, embed_dim=64, output_channels=96, num_blocks=2).eval()
    z = torch.randn(3, 8, 2, 3)
    with torch.no_grad():
        batched = decoder(z)
        single = torch.cat([decoder(z[i : i + 1]) for i in range(3)])
        mixed = decoder([z[:1], torch.randn(1, 8, 4, 1), z[2:]])
    assert batched.shape == (3, 96, 2, 3)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[2], single[2:], atol=1e-5, rtol=1e-5)
    assert mixed[1].shape == (1, 96, 4, 1)


def test_rows_to_maps_round_trip():
    rows = torch.arange(2 * 6 * 3, dtype=torch.float32).reshape(12, 3)
    maps = rows_to_maps(rows, [(2, 3), (2, 3)])
    assert maps.shape == (2, 3, 2, 3) and maps[1, :, 0, 2].tolist() == rows[8].tolist()
    parts = rows_to_maps(rows, [(2, 3), (3, 2)])
    assert [tuple(p.shape) for p in parts] == [(1, 3, 2, 3), (1, 3, 3, 2)]


def test_batched_path_equals_transformers_forward():
    """Equal-size images take the batched block path; it must compute transformers' packed forward."""
    torch.manual_seed(0)
    vit = build_vit(vit_config(TINY_VIT)).eval()
    patches, grid = prepare_vit_input(torch.rand(3, 3, 112, 84) * 2 - 1)
    with torch.no_grad():
        torch.testing.assert_close(
            vit_features(vit, patches, grid), vit(patches, grid_thw=grid).pooler_output, atol=1e-6, rtol=1e-6
        )


def test_merge_window_positions_follow_patch_order():
    assert merge_window_position_ids(2, 4, 2).tolist() == [
        [0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3],
    ]  # fmt: skip


def test_gradient_checkpointing_keeps_gradients():
    torch.manual_seed(0)
    vit = build_vit(vit_config(TINY_VIT)).train()
    patches, grid = prepare_vit_input(torch.rand(2, 3, 56, 56) * 2 - 1)
    vit_features(vit, patches, grid).square().sum().backward()
    plain = [p.grad.clone() for p in vit.parameters()]
    vit.zero_grad()
    vit.activation_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in vit.blocks)
    vit_features(vit, patches, grid).square().sum().backward()
    for expected, param in zip(plain, vit.parameters()):
        torch.testing.assert_close(param.grad, expected)
