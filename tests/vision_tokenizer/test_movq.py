"""MoVQ pixel encoder / decoder: golden parity, official key layout, and hand-checked building blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from vision_tokenizer.models.movq import (
    DCDownBlock2d,
    DCUpBlock2d,
    MoVQConfig,
    MoVQDecoder,
    MoVQEncoder,
    MoVQSpatialNorm,
)

from tests.conftest import golden_dir, manifests_dir

ATOL = RTOL = 1e-4

# The official `pixel_encoder` / `pixel_decoder` dicts of configs/example/dualvitok/dualvitok_anyres_max512.py.
OFFICIAL_PIXEL_ENCODER = dict(
    ch=128,
    attn_resolutions=[4],
    ch_mult=[1, 1, 2, 2, 4],
    codebook_size=32768 * 3,
    double_z=False,
    dropout=0.0,
    embed_dim=32,
    in_channels=3,
    num_res_blocks=2,
    out_channels=3,
    z_channels=32,
    use_dc_up_down_blocks=True,
)
OFFICIAL_PIXEL_DECODER = dict(
    ch=384,
    attn_resolutions=[4],
    ch_mult=[1, 1, 2, 2, 4],
    codebook_size=32768 * 3,
    double_z=False,
    dropout=0.0,
    embed_dim=64,
    in_channels=3,
    num_res_blocks=2,
    out_channels=3,
    z_channels=64,
    use_dc_up_down_blocks=True,
)


def _movq_cases() -> list[Path]:
    """Every `movq*_io*.safetensors` in the golden folder (its config/state dict share the prefix before `_io`)."""
    return sorted(golden_dir().glob("movq*_io*.safetensors"))


def _sibling(io_path: Path, suffix: str) -> Path:
    prefix = io_path.name.rsplit("_io", 1)[0]
    path = io_path.with_name(prefix + suffix)
    if not path.is_file():
        pytest.fail(f"{io_path.name}: companion file {path.name} is missing")
    return path


def _load_pair(io_path: Path) -> tuple[MoVQEncoder, MoVQDecoder]:
    config = json.loads(_sibling(io_path, "_config.json").read_text())
    state = load_file(_sibling(io_path, "_state_dict.safetensors"))
    encoder = MoVQEncoder(MoVQConfig.from_dict(config["encoder"])).eval()
    decoder = MoVQDecoder(MoVQConfig.from_dict(config["decoder"])).eval()
    for name, module in (("encoder", encoder), ("decoder", decoder)):
        prefix = name + "."
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True
        )
    assert len(encoder.state_dict()) + len(decoder.state_dict()) == len(state), "state dict has foreign keys"
    return encoder, decoder


def test_golden_movq_cases_exist(golden):
    assert _movq_cases(), f"no movq*_io*.safetensors in {golden}"


@pytest.mark.parametrize("io_path", _movq_cases(), ids=lambda p: p.stem)
def test_golden_movq_pair(io_path: Path):
    encoder, decoder = _load_pair(io_path)
    io = load_file(io_path)
    # output name -> (module, input names) as recorded by the golden driver
    recorded = {
        "encoder.output": (encoder, ["encoder.input"]),
        "decoder.output": (decoder, ["decoder.z", "decoder.zq"]),
        "decoder.output_zq_lowres": (decoder, ["decoder.z", "decoder.zq_lowres"]),
    }
    present = [name for name in recorded if name in io]
    assert {"encoder.output", "decoder.output"} <= set(present), f"{io_path.name} lacks the basic outputs"
    with torch.no_grad():
        for name in present:
            module, inputs = recorded[name]
            torch.testing.assert_close(
                module(*(io[i] for i in inputs)), io[name], atol=ATOL, rtol=RTOL, msg=name
            )


def _manifest_entries(prefix: str) -> dict[str, tuple[list[int], str]]:
    manifest = json.loads((manifests_dir() / "dualvitok_anyres_max512.json").read_text())
    return {
        k[len(prefix) :]: (shape, dtype)
        for k, (shape, dtype) in manifest["state_dict"].items()
        if k.startswith(prefix)
    }


@pytest.mark.parametrize(
    ("prefix", "cls", "config"),
    [
        ("pixel_encoder.", MoVQEncoder, OFFICIAL_PIXEL_ENCODER),
        ("pixel_decoder.", MoVQDecoder, OFFICIAL_PIXEL_DECODER),
    ],
)
def test_full_size_layout_matches_manifest(prefix, cls, config):
    with torch.device("meta"):
        module = cls(MoVQConfig.from_dict(config))
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}
    expected = _manifest_entries(prefix)
    assert sorted(set(expected) - set(ours)) == [], "missing keys"
    assert sorted(set(ours) - set(expected)) == [], "unexpected keys"
    mismatched = {k: (ours[k], expected[k]) for k in expected if ours[k] != tuple(expected[k])}
    assert mismatched == {}


def test_encoder_stride_and_shapes():
    config = MoVQConfig(
        ch=32, ch_mult=(1, 2, 1), z_channels=8, embed_dim=8, attn_resolutions=(2,), use_dc_up_down_blocks=True
    )
    assert config.spatial_factor == 4
    out = MoVQEncoder(config).eval()(torch.randn(2, 3, 24, 40))
    assert out.shape == (2, 8, 6, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        MoVQEncoder(config)(torch.randn(1, 3, 26, 40))


def test_dc_down_shortcut_is_2x2_mean():
    block = DCDownBlock2d(4)
    torch.nn.init.zeros_(block.conv.weight)
    torch.nn.init.zeros_(block.conv.bias)
    x = torch.arange(64, dtype=torch.float32).view(1, 4, 4, 4)
    # channel c holds 16c + (4r + col); the mean of each 2x2 block is 16c + [[2.5, 4.5], [10.5, 12.5]]
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]]) + 16 * torch.arange(4.0).view(4, 1, 1)
    torch.testing.assert_close(block(x), expected.unsqueeze(0), atol=0, rtol=0)


def test_dc_up_shortcut_is_nearest_2x():
    block = DCUpBlock2d(2)
    torch.nn.init.zeros_(block.conv.weight)
    torch.nn.init.zeros_(block.conv.bias)
    x = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # [1, 2, 1, 2]
    expected = torch.tensor([[[[1.0, 1.0, 2.0, 2.0]] * 2, [[3.0, 3.0, 4.0, 4.0]] * 2]])
    torch.testing.assert_close(block(x), expected, atol=0, rtol=0)


def test_dc_blocks_add_conv_branch_in_space_to_depth_order():
    down, up = DCDownBlock2d(4), DCUpBlock2d(4)
    x = torch.randn(1, 4, 6, 8)
    with torch.no_grad():
        conv_down = down.conv(x)  # [1, 1, 6, 8]; unshuffle puts pixel (2i+a, 2j+b) into channel 2a+b
        expected_down = torch.stack([conv_down[0, 0, a::2, b::2] for a in (0, 1) for b in (0, 1)])[None]
        torch.testing.assert_close(down(x), expected_down + F.avg_pool2d(x, 2))
        conv_up = up.conv(x)  # [1, 16, 6, 8]; channel 4c + 2a + b lands on pixel (2i+a, 2j+b) of channel c
        expected_up = x.repeat_interleave(2, -1).repeat_interleave(2, -2).clone()
        for a in (0, 1):
            for b in (0, 1):
                expected_up[:, :, a::2, b::2] += conv_up[:, 2 * a + b :: 4]
        torch.testing.assert_close(up(x), expected_up)


@pytest.mark.parametrize("zq_size", [(4, 6), (8, 12), (3, 4), (5, 7), (16, 24)], ids=str)
def test_spatial_norm_matches_resize_then_modulate(zq_size):
    """The low-res modulation + broadcast equals the definition: nearest-resize zq, then 1x1 convs."""
    norm = MoVQSpatialNorm(32, 6)
    for p in norm.norm_layer.parameters():
        torch.nn.init.normal_(p)
    x, zq = torch.randn(2, 32, 8, 12), torch.randn(2, 6, *zq_size)
    with torch.no_grad():
        zq_full = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        gn = F.group_norm(x, 32, norm.norm_layer.weight, norm.norm_layer.bias, eps=1e-6)
        expected = gn * norm.conv_y(zq_full) + norm.conv_b(zq_full)
        torch.testing.assert_close(norm(x, zq), expected)


def test_classic_up_down_blocks_shapes():
    config = MoVQConfig(ch=32, ch_mult=(1, 1), z_channels=4, embed_dim=4, attn_resolutions=())
    encoder, decoder = MoVQEncoder(config).eval(), MoVQDecoder(config).eval()
    assert "down.0.downsample.conv.weight" in encoder.state_dict()
    assert "up.1.upsample.conv.weight" in decoder.state_dict()
    with torch.no_grad():
        z = encoder(torch.randn(1, 3, 16, 20))
        assert z.shape == (1, 4, 8, 10)
        assert decoder(z, z).shape == (1, 3, 16, 20)


def test_gradient_checkpointing_gives_same_gradients():
    config = MoVQConfig(
        ch=32, ch_mult=(1, 1), z_channels=4, embed_dim=4, attn_resolutions=(1,), use_dc_up_down_blocks=True
    )
    decoder = MoVQDecoder(config).train()
    z, zq = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    grads = []
    for enabled in (False, True):
        decoder.zero_grad()
        decoder.gradient_checkpointing = enabled
        decoder(z, zq).square().mean().backward()
        grads.append([p.grad.clone() for p in decoder.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)


def test_config_round_trip_and_unknown_key():
    config = MoVQConfig.from_dict(OFFICIAL_PIXEL_DECODER)
    assert config.to_dict() == {**OFFICIAL_PIXEL_DECODER, "model_type": "MoVQ"}
    with pytest.raises(ValueError, match="resolution_typo"):
        MoVQConfig.from_dict({**OFFICIAL_PIXEL_ENCODER, "resolution_typo": 3})


def test_decoder_rejects_mismatched_zq():
    config = MoVQConfig(
        ch=32, ch_mult=(1, 1), z_channels=4, embed_dim=8, attn_resolutions=(), use_dc_up_down_blocks=True
    )
    with pytest.raises(ValueError, match="zq"):
        MoVQDecoder(config)(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4))
