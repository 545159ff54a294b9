"""TTSR's training losses (section 3.4): reconstruction, perceptual, transferal perceptual and WGAN-GP.

All images are in [-1, 1]; the VGG networks see them mapped to [0, 1].
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vtrain.models.ttsr.lte import VGG19Relu51


def reconstruction_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """L1 between output and ground truth (eq. 9), mean over pixels."""
    return F.l1_loss(sr, hr)


class PerceptualLoss(nn.Module):
    """Mean squared difference of VGG19 relu5_1 features of output and ground truth (eq. 10's first term).

    Args:
        vgg_weights: torchvision VGG19 ImageNet state dict file; None: random VGG.
    """

    def __init__(self, vgg_weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.vgg = VGG19Relu51(vgg_weights)

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        """sr, hr: [B, 3, H, W] in [-1, 1] -> scalar; gradients reach ``sr`` only."""
        with torch.no_grad():
            target = self.vgg((hr + 1) / 2)
        return F.mse_loss(self.vgg((sr + 1) / 2), target)


def transferal_perceptual_loss(
    sr_textures: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    S: torch.Tensor,
    T_lv3: torch.Tensor,
    T_lv2: torch.Tensor,
    T_lv1: torch.Tensor,
    use_soft_attention: bool = False,
    kind: str = "l2",
) -> torch.Tensor:
    """Distance between the LTE features of the output and the transferred textures at the three scales,
    averaged (eq. 10's second term; official defaults: mean squared error, no soft-attention weighting).

    Args:
        sr_textures: ``TTSR.texture_features(sr)``: lv1 [B, 64, 4h, 4w], lv2 [B, 128, 2h, 2w],
            lv3 [B, 256, h, w].
        S: soft attention [B, 1, h, w]; T_lv3, T_lv2, T_lv1: transferred textures (``TTSROutput``).
        use_soft_attention: weight both sides by sigmoid(S) (bicubic-upsampled to each scale).
        kind: "l2" (mean squared error) or "l1".
    """
    if kind not in ("l1", "l2"):
        raise ValueError(f"transferal_perceptual_loss: kind must be 'l1' or 'l2', found {kind!r}")
    distance = F.mse_loss if kind == "l2" else F.l1_loss
    sr_lv1, sr_lv2, sr_lv3 = sr_textures
    total = S.new_zeros(())
    for factor, feature, texture in ((1, sr_lv3, T_lv3), (2, sr_lv2, T_lv2), (4, sr_lv1, T_lv1)):
        if use_soft_attention:
            s = S if factor == 1 else F.interpolate(S, scale_factor=factor, mode="bicubic")
            weight = torch.sigmoid(s)
            feature, texture = feature * weight, texture * weight
        total = total + distance(feature, texture)
    return total / 3


def critic_loss(
    discriminator: nn.Module, fake: torch.Tensor, real: torch.Tensor, gp_weight: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """WGAN-GP critic loss ``D(fake) - D(real) + gp_weight * (||grad D(x_hat)|| - 1)^2`` with ``x_hat``
    uniformly between each real and fake pair (Gulrajani et al. 2017).

    Args:
        fake: generated images [B, 3, H, W] (detached here), real: ground truth [B, 3, H, W].

    Returns:
        (the loss to minimise, the gradient penalty term), scalars.
    """
    fake = fake.detach()
    loss = discriminator(fake).mean() - discriminator(real).mean()
    epsilon = torch.rand(real.size(0), 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (fake * (1 - epsilon) + real * epsilon).requires_grad_(True)
    (gradients,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    penalty = gp_weight * (gradients.flatten(1).norm(2, dim=1) - 1).pow(2).mean()
    return loss + penalty, penalty


def generator_adversarial_loss(discriminator: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss ``-D(fake)``, mean over the batch."""
    return -discriminator(fake).mean()
