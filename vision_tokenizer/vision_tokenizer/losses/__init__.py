"""Training objectives of DualViTok: reconstruction, LPIPS, PatchGAN, codebook and semantic losses."""

from vision_tokenizer.losses.adversarial import (
    DISC_LOSSES,
    GEN_ADV_LOSSES,
    LeCAMEMA,
    adopt_weight,
    hinge_d_loss,
    hinge_gen_loss,
    non_saturating_d_loss,
    non_saturating_gen_loss,
    vanilla_d_loss,
)
from vision_tokenizer.losses.discriminator import NLayerDiscriminator, init_discriminator_weights
from vision_tokenizer.losses.dualvitok_loss import (
    DualViTokLoss,
    DualViTokLossConfig,
    semantic_reconstruction_loss,
)
from vision_tokenizer.losses.lpips import LPIPS, VGG16Features

__all__ = [
    "DISC_LOSSES",
    "GEN_ADV_LOSSES",
    "LPIPS",
    "DualViTokLoss",
    "DualViTokLossConfig",
    "LeCAMEMA",
    "NLayerDiscriminator",
    "VGG16Features",
    "adopt_weight",
    "hinge_d_loss",
    "hinge_gen_loss",
    "init_discriminator_weights",
    "non_saturating_d_loss",
    "non_saturating_gen_loss",
    "semantic_reconstruction_loss",
    "vanilla_d_loss",
]
