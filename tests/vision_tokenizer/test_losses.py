"""DualViTok training losses: discriminator layout, GAN objectives, LPIPS, the combined loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from vision_tokenizer.losses import (
    LPIPS,
    DualViTokLoss,
    DualViTokLossConfig,
    NLayerDiscriminator,
    hinge_d_loss,
    hinge_gen_loss,
    non_saturating_d_loss,
    non_saturating_gen_loss,
    semantic_reconstruction_loss,
    vanilla_d_loss,
)


def test_discriminator_official_keys_and_patch_grid():
    disc = NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)
    keys = set(disc.state_dict())
    convs = {f"main.{i}.weight" for i in (0, 2, 5, 8, 11)} | {"main.0.bias", "main.11.bias"}
    norms = {
        f"main.{i}.{n}"
        for i in (3, 6, 9)
        for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    assert keys == convs | norms
    shapes = {k: tuple(v.shape) for k, v in disc.state_dict().items()}
    assert shapes["main.0.weight"] == (64, 3, 4, 4)
    assert shapes["main.2.weight"] == (128, 64, 4, 4)
    assert shapes["main.5.weight"] == (256, 128, 4, 4)
    assert shapes["main.8.weight"] == (512, 256, 4, 4)
    assert shapes["main.11.weight"] == (1, 512, 4, 4)
    # 64 -> 32 -> 16 -> 8 (stride 2, k4 p1) -> 7 -> 6 (stride 1, k4 p1)
    assert disc(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_discriminator_init_statistics():
    torch.manual_seed(1)
    disc = NLayerDiscriminator(ndf=64, n_layers=3)
    conv = disc.main[8].weight
    assert abs(conv.std().item() - 0.02) < 0.002 and abs(conv.mean().item()) < 0.002
    bn = disc.main[9]
    assert abs(bn.weight.mean().item() - 1.0) < 0.01 and torch.all(bn.bias == 0)


def test_gan_objectives_match_hand_values():
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.5])
    # hinge: relu(1-real) = [0, .5, 2] -> mean 5/6 ; relu(1+fake) = [0, 1, 2.5] -> mean 7/6
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 7 / 6))
    sp = lambda t: torch.log1p(torch.exp(t))  # noqa: E731
    assert vanilla_d_loss(real, fake).item() == pytest.approx(
        0.5 * (sp(-real).mean() + sp(fake).mean()).item()
    )
    assert non_saturating_d_loss(real, fake).item() == pytest.approx(
        (sp(-real).mean() + sp(fake).mean()).item()
    )
    assert hinge_gen_loss(fake).item() == pytest.approx(-fake.mean().item())
    assert non_saturating_gen_loss(fake).item() == pytest.approx(sp(-fake).mean().item())


def test_semantic_cosine_loss_hand_value():
    target = torch.zeros(1, 2, 1, 2)
    target[0, 0] = 1.0  # both positions point along channel 0
    decoded = torch.zeros(1, 2, 1, 2)
    decoded[0, 0, 0, 0] = 1.0  # same direction: 1 - cos = 0
    decoded[0, 1, 0, 1] = 3.0  # orthogonal: 1 - cos = 1
    assert semantic_reconstruction_loss(decoded, target, "cos").item() == pytest.approx(0.5)
    assert semantic_reconstruction_loss(decoded, target, "cos_l2").item() == pytest.approx(
        0.5 + F.mse_loss(decoded, target).item()
    )


def _lpips_reference(module: LPIPS, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS written out from the paper's formula on the module's own VGG taps."""
    norm = lambda t: (t - module.shift) / module.scale  # noqa: E731
    total = torch.zeros(a.shape[0])
    for k, (fa, fb) in enumerate(zip(module.net(norm(a)), module.net(norm(b)))):
        fa = fa / (fa.norm(dim=1, keepdim=True) + 1e-10)
        fb = fb / (fb.norm(dim=1, keepdim=True) + 1e-10)
        w = getattr(module, f"lin{k}").model[1].weight.view(1, -1, 1, 1)
        total += ((fa - fb) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_formula_and_identity():
    torch.manual_seed(0)
    module = LPIPS(pretrained=False)
    for k in range(5):
        getattr(module, f"lin{k}").model[1].weight.data.uniform_(0, 1)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    got = module(a, b)
    assert got.shape == (2, 1, 1, 1)
    torch.testing.assert_close(got.view(-1), _lpips_reference(module, a, b), atol=1e-5, rtol=1e-5)
    assert module(a, a).abs().max().item() < 1e-6
    assert not any(p.requires_grad for p in module.parameters())
    module.train()
    assert not module.training


def test_lpips_loads_local_torchvision_and_head_files(tmp_path):
    torch.manual_seed(3)
    source = LPIPS(pretrained=False)
    vgg = {k: v for k, v in source.net.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    heads = {
        f"lin{k}.model.1.weight": torch.rand_like(getattr(source, f"lin{k}").model[1].weight)
        for k in range(5)
    }
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(heads, tmp_path / "vgg.pth")
    loaded = LPIPS(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth"))
    torch.testing.assert_close(loaded.net.features[28].weight, source.net.features[28].weight)
    torch.testing.assert_close(loaded.lin4.model[1].weight, heads["lin4.model.1.weight"])
    with pytest.raises(FileNotFoundError, match="perceptual_vgg_weights"):
        LPIPS(str(tmp_path / "missing.pth"), str(tmp_path / "vgg.pth"))
    with pytest.raises(ValueError, match="perceptual_lin_weights"):
        LPIPS(str(tmp_path / "vgg16.pth"), None)


def _loss(**overrides) -> DualViTokLoss:
    cfg = dict(
        disc_start=5,
        disc_weight=0.5,
        disc_dim=8,
        disc_num_layers=2,
        perceptual_weight=0.0,
        reconstruction_loss="l2",
        semantic_reconstruction="cos",
    )
    cfg.update(overrides)
    return DualViTokLoss(cfg)


def _inputs():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rec = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    sem = (torch.randn(2, 6, 3, 3), torch.tensor(0.3), torch.randn(2, 6, 3, 3))
    return x, rec, torch.tensor(0.7), sem


def test_generator_loss_terms_and_disc_start():
    loss = _loss(codebook_weight=2.0, semantic_codebook_weight=0.5, semantic_reconstruction_weight=3.0)
    x, rec, cb, sem = _inputs()
    expected_no_adv = (
        F.mse_loss(rec, x) + 2.0 * 0.7 + 0.5 * 0.3 + 3.0 * semantic_reconstruction_loss(sem[0], sem[2], "cos")
    )
    before, logs = loss.generator_loss(x, rec, cb, sem, step=3)  # s = 4 < 5
    assert before.item() == pytest.approx(expected_no_adv.item(), rel=1e-6)
    assert logs["gen_loss/disc_factor"].item() == 0.0
    after, logs = loss.generator_loss(x, rec, cb, sem, step=4)  # s = 5 >= 5
    adv = -loss.discriminator(rec).mean()
    assert after.item() == pytest.approx((expected_no_adv + 0.5 * adv).item(), rel=1e-5)
    assert set(logs) >= {
        "gen_loss/rec_loss",
        "gen_loss/codebook_loss",
        "semantic_loss/reconstruction_loss",
        "semantic_loss/codebook_loss",
        "gen_loss/gen_adv_loss",
        "gen_loss/total",
    }


def test_l1_reconstruction_and_codebook_enlargement():
    loss = _loss(
        reconstruction_loss="l1", codebook_enlarge_ratio=3.0, codebook_enlarge_steps=10, disc_start=100
    )
    x, rec, cb, _ = _inputs()
    total, _ = loss.generator_loss(x, rec, cb, None, step=5)  # scale 1 + 3 * 0.5
    assert total.item() == pytest.approx((F.l1_loss(rec, x) + 2.5 * 0.7).item(), rel=1e-6)


def test_adaptive_weight_is_gradient_norm_ratio():
    loss = _loss(disc_adaptive_weight=True, disc_start=0)
    x, _, cb, _ = _inputs()
    layer = torch.nn.Conv2d(3, 3, 1)
    rec = layer(x)
    _, logs = loss.generator_loss(x, rec, cb, None, step=0, last_layer=layer.weight)
    g_nll = torch.autograd.grad(F.mse_loss(layer(x), x), layer.weight)[0]
    g_adv = torch.autograd.grad(-loss.discriminator(layer(x)).mean(), layer.weight)[0]
    assert logs["gen_loss/disc_weight"].item() == pytest.approx(
        (g_nll.norm() / (g_adv.norm() + 1e-4)).item(), rel=1e-4
    )


def test_discriminator_loss_and_lecam():
    loss = _loss(disc_start=0, lecam_loss_weight=0.1)
    x, rec, _, _ = _inputs()
    d_loss, logs = loss.discriminator_loss(x, rec, step=0)
    loss.discriminator.eval()
    assert "disc_loss/lecam" in logs and d_loss.item() > 0
    assert loss.lecam.logits_real_ema.item() != 0.0  # updated by the call
    silent = _loss(disc_start=100)
    d_loss, _ = silent.discriminator_loss(x, rec, step=0)
    assert d_loss.item() == 0.0


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="disc_typo"):
        DualViTokLossConfig.from_dict({"disc_typo": 1})
    with pytest.raises(ValueError, match="stylegan"):
        DualViTokLossConfig.from_dict({"disc_type": "stylegan"})
    with pytest.raises(ValueError, match="semantic_reconstruction"):
        DualViTokLossConfig.from_dict({"semantic_reconstruction": "dot"})
    with pytest.raises(ValueError, match="perceptual_vgg_weights"):
        DualViTokLoss({"perceptual_weight": 1.0})


def test_losses_stay_float32_under_fp16_autocast():
    loss = _loss(disc_start=100)
    x, rec, cb, sem = _inputs()
    with torch.autocast("cpu", dtype=torch.float16):
        d_loss, _ = loss.discriminator_loss(x, rec, step=0)
        g_loss, _ = loss.generator_loss(x, rec, cb, sem, step=0)
    assert d_loss.dtype == g_loss.dtype == torch.float32
    (d_loss * 65536.0).backward()  # a GradScaler-sized factor must not overflow to inf in fp16
    assert all(p.grad.isfinite().all() for p in loss.discriminator.parameters())
