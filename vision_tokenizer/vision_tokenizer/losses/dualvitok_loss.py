"""`DualViTokLoss`: every training objective of the tokenizer, built from the `vq_loss` config.

Generator side (one scalar to back-propagate through the tokenizer):
    rec·L_rec(x, x̂) + perc·LPIPS(x, x̂) + gen·w_adapt·λ_d(s)·L_adv(D(x̂))
    + cb·c(s)·L_commit_pix + sem·(sem_cb·L_commit_sem + sem_rec·L_sem(ŝ, v̂))
Discriminator side:
    λ_d(s)·L_D(D(x), D(sg x̂)) [+ lecam·LeCAM]
with λ_d(s) = disc_weight once s = step + 1 reaches `disc_start` (0 before) and c(s) the optional
early codebook-loss enlargement. Each call returns the loss and a dict of detached named
scalars for logging.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vision_tokenizer.losses.adversarial import LeCAMEMA, adopt_weight, get_disc_loss, get_gen_adv_loss
from vision_tokenizer.losses.discriminator import NLayerDiscriminator
from vision_tokenizer.losses.lpips import LPIPS

__all__ = ["DualViTokLossConfig", "DualViTokLoss", "semantic_reconstruction_loss", "RECONSTRUCTION_LOSSES"]

RECONSTRUCTION_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}
SEMANTIC_RECONSTRUCTIONS = ("cos", "l1", "cos_l1", "cos_l2")
# Keys of the official config that only matter for discriminators we do not ship.
_UNUSED_WITH_PATCHGAN = ("image_size", "aug_prob")


@dataclass
class DualViTokLossConfig:
    """The `vq_loss` dict; defaults are the official constructor defaults."""

    disc_start: int = 20000
    disc_loss: str = "hinge"
    disc_dim: int = 64
    disc_type: str = "patchgan"
    image_size: int = 256
    disc_num_layers: int = 3
    disc_in_channels: int = 3
    disc_weight: float = 1.0
    disc_adaptive_weight: bool = False
    gen_adv_loss: str = "hinge"
    gen_loss_weight: float = 1.0
    reconstruction_loss: str = "l2"
    reconstruction_weight: float = 1.0
    codebook_weight: float = 1.0
    codebook_enlarge_ratio: float = 0.0
    codebook_enlarge_steps: int = 2000
    perceptual_weight: float = 1.0
    perceptual_pretrained: bool = True
    perceptual_vgg_weights: str | None = None
    perceptual_lin_weights: str | None = None
    semantic_reconstruction: str = "cos"
    semantic_weight: float = 1.0
    semantic_codebook_weight: float = 1.0
    semantic_reconstruction_weight: float = 1.0
    lecam_loss_weight: float | None = None
    lecam_ema_decay: float = 0.999
    aug_prob: float = 1.0
    norm_type: str = "bn"

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> DualViTokLossConfig:
        """Accept the official dict (optionally with `type='DualViTokLoss'`); unknown keys raise."""
        data = {k: v for k, v in dict(cfg).items() if k != "type"}
        if cfg.get("type", "DualViTokLoss") != "DualViTokLoss":
            raise ValueError(f"vq_loss.type={cfg['type']!r} is not supported (choices: ['DualViTokLoss'])")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"vq_loss has unknown keys {unknown}; known keys: {sorted(known)}")
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        if self.disc_type != "patchgan":
            raise ValueError(f"vq_loss.disc_type={self.disc_type!r} is not supported (choices: ['patchgan'])")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"vq_loss.reconstruction_loss={self.reconstruction_loss!r} is not supported "
                f"(choices: {sorted(RECONSTRUCTION_LOSSES)})"
            )
        if self.semantic_reconstruction not in SEMANTIC_RECONSTRUCTIONS:
            raise ValueError(
                f"vq_loss.semantic_reconstruction={self.semantic_reconstruction!r} is not supported "
                f"(choices: {list(SEMANTIC_RECONSTRUCTIONS)})"
            )
        get_disc_loss(self.disc_loss)
        get_gen_adv_loss(self.gen_adv_loss)


def semantic_reconstruction_loss(decoded: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between decoded and target ViT features, both (B, C, h, w).

    `cos`: mean over positions of 1 - cos(ŝ_p, v̂_p); `l1`: smooth-L1; `cos_l1` / `cos_l2`: the
    cosine term plus smooth-L1 / MSE.
    """
    decoded, target = decoded.float(), target.float()
    cosine = (1.0 - F.cosine_similarity(decoded, target, dim=1)).mean()
    if kind == "cos":
        return cosine
    if kind == "l1":
        return F.smooth_l1_loss(decoded, target)
    if kind == "cos_l1":
        return cosine + F.smooth_l1_loss(decoded, target)
    if kind == "cos_l2":
        return cosine + F.mse_loss(decoded, target)
    raise ValueError(
        f"semantic_reconstruction={kind!r} is not supported (choices: {list(SEMANTIC_RECONSTRUCTIONS)})"
    )


class DualViTokLoss(nn.Module):
    """Holds the discriminator, LPIPS and the weights; see the module docstring for the formulas."""

    def __init__(self, config: DualViTokLossConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, DualViTokLossConfig):
            config = DualViTokLossConfig.from_dict(config)
        self.config = config
        self.discriminator = NLayerDiscriminator(
            input_nc=config.disc_in_channels,
            ndf=config.disc_dim,
            n_layers=config.disc_num_layers,
            norm_type=config.norm_type,
        )
        self.perceptual_loss = (
            LPIPS(
                config.perceptual_vgg_weights,
                config.perceptual_lin_weights,
                pretrained=config.perceptual_pretrained,
            )
            if config.perceptual_weight > 0
            else None
        )
        self.rec_loss = RECONSTRUCTION_LOSSES[config.reconstruction_loss]
        self.disc_loss_fn = get_disc_loss(config.disc_loss)
        self.gen_adv_loss_fn = get_gen_adv_loss(config.gen_adv_loss)
        self.lecam = LeCAMEMA(config.lecam_ema_decay) if config.lecam_loss_weight else None

    def disc_factor(self, step: int) -> float:
        """λ_d for the 0-based training step (the schedule counts 1-based, as the official loop)."""
        return adopt_weight(self.config.disc_weight, step + 1, self.config.disc_start)

    def codebook_scale(self, step: int) -> float:
        """Early enlargement of the pixel codebook loss: 1 + ratio·max(0, 1 - step/steps)."""
        ratio = self.config.codebook_enlarge_ratio
        if not ratio:
            return 1.0
        return 1.0 + ratio * max(0.0, 1.0 - step / max(1, self.config.codebook_enlarge_steps))

    @staticmethod
    def adaptive_weight(nll: torch.Tensor, gen: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
        """‖∇_W nll‖ / (‖∇_W gen‖ + 1e-4), clamped to [0, 1e4] and detached (Esser et al., 2021)."""
        nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
        gen_grad = torch.autograd.grad(gen, last_layer, retain_graph=True)[0]
        weight = nll_grad.norm() / (gen_grad.norm() + 1e-4)
        return weight.clamp(0.0, 1e4).detach()

    def generator_loss(
        self,
        inputs: torch.Tensor,
        reconstructions: torch.Tensor,
        pixel_codebook_loss: torch.Tensor,
        semantic: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        step: int,
        last_layer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Tokenizer objective. `semantic` = (decoded features, semantic codebook loss, target)."""
        cfg = self.config
        inputs, reconstructions = inputs.float(), reconstructions.float()
        rec = self.rec_loss(reconstructions, inputs)
        perceptual = (
            self.perceptual_loss(inputs, reconstructions).float().mean()
            if self.perceptual_loss is not None
            else rec.new_zeros(())
        )
        nll = cfg.reconstruction_weight * rec + cfg.perceptual_weight * perceptual

        gen_adv = self.gen_adv_loss_fn(self.discriminator(reconstructions).float())
        disc_factor = self.disc_factor(step)
        if cfg.disc_adaptive_weight and disc_factor > 0 and self.training:
            if last_layer is None:
                raise ValueError("disc_adaptive_weight=True needs the decoder's last layer weight")
            adaptive = self.adaptive_weight(nll, gen_adv, last_layer)
        else:
            adaptive = rec.new_ones(())
        adversarial = cfg.gen_loss_weight * adaptive * disc_factor * gen_adv

        codebook = cfg.codebook_weight * self.codebook_scale(step) * pixel_codebook_loss.float().mean()
        total = nll + adversarial + codebook
        logs = {
            "gen_loss/rec_loss": rec,
            "gen_loss/perceptual_loss": perceptual,
            "gen_loss/codebook_loss": pixel_codebook_loss.float().mean(),
            "gen_loss/gen_adv_loss": gen_adv,
            "gen_loss/disc_weight": adaptive,
            "gen_loss/disc_factor": rec.new_tensor(disc_factor),
        }
        if semantic is not None:
            decoded, semantic_codebook_loss, target = semantic
            sem_rec = semantic_reconstruction_loss(decoded, target, cfg.semantic_reconstruction)
            sem_cb = semantic_codebook_loss.float().mean()
            total = total + cfg.semantic_weight * (
                cfg.semantic_codebook_weight * sem_cb + cfg.semantic_reconstruction_weight * sem_rec
            )
            logs["semantic_loss/codebook_loss"] = sem_cb
            logs["semantic_loss/reconstruction_loss"] = sem_rec
        logs["gen_loss/total"] = total
        return total, {k: v.detach() for k, v in logs.items()}

    def discriminator_loss(
        self, inputs: torch.Tensor, reconstructions: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Discriminator objective on real images and detached reconstructions.

        Real and fake batches take separate forwards, so BatchNorm normalises each with its
        own statistics (as in the official loss). Logits are upcast so that the loss, and the
        gradient a GradScaler feeds into it, stay in float32 under fp16 autocast.
        """
        logits_real = self.discriminator(inputs.detach().float()).float()
        logits_fake = self.discriminator(reconstructions.detach().float()).float()
        disc_factor = self.disc_factor(step)
        loss = disc_factor * self.disc_loss_fn(logits_real, logits_fake)
        logs = {
            "disc_loss/logits_real": logits_real.mean(),
            "disc_loss/logits_fake": logits_fake.mean(),
        }
        if self.lecam is not None:
            lecam = self.lecam.regulariser(logits_real, logits_fake)
            self.lecam.update(logits_real, logits_fake)
            loss = loss + disc_factor * self.config.lecam_loss_weight * lecam
            logs["disc_loss/lecam"] = lecam
        logs["disc_loss/total"] = loss
        return loss, {k: v.detach() for k, v in logs.items()}
