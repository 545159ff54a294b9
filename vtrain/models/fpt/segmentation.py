"""Semantic segmentation with the FPT: ResNet C2..C5 -> 1 x 1 laterals -> FPT (or FPN -> FPT, or FPN alone
for the baseline) -> a semantic-FPN head (Kirillov et al., Panoptic FPN, 2019): every level is brought to
stride 4 by [3 x 3 conv, GroupNorm, ReLU, 2x bilinear upsampling] blocks (none for P2, three for P5), the
four maps are summed, and a 1 x 1 convolution gives the class logits, upsampled 4x to the input.

The paper (section 3.5 and the pixel-level experiments of section 4) builds its pixel-level pyramid
differently: an "unscathed feature pyramid" (UFP: a pyramidal global convolutional network with kernels
1, 7, 15 and 31) on a dilated ResNet-101 (output stride 8), with the FPT under the head of OCNet (Yuan and
Wang 2018), compared with OCNet's PPM / ASPP context modules (the first author, ZHANGDONG-NJUST/FPT issue
#7: "PPM/ASPP/UFP+OC"); that code is not released; see docs/fpt.md. The semantic-FPN head keeps the FPT's
input the same kind of pyramid as the instance-level experiments and runs at CPU sizes; ``fpt=False`` is
the FPN baseline with the same head.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vtrain.models.fpt.backbone import BackboneWithFPT, require_backbone_weights


def _conv_gn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = min(32, out_channels // 4) or 1
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.GroupNorm(groups, out_channels),
        nn.ReLU(inplace=True),
    )


class SemanticFPNHead(nn.Module):
    """Panoptic FPN's semantic branch: levels at strides 4, 8, 16, 32 ([B, C, H / s, W / s]) -> logits
    [B, num_classes, H / 4, W / 4]."""

    def __init__(
        self, in_channels: int, channels: int, num_classes: int, num_levels: int = 4, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for level in range(num_levels):
            blocks = [
                _conv_gn_relu(in_channels if i == 0 else channels, channels) for i in range(max(1, level))
            ]
            self.scale_heads.append(nn.ModuleList(blocks))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        total = 0
        for level, (x, blocks) in enumerate(zip(features, self.scale_heads, strict=True)):
            for block in blocks:
                x = block(x)
                if level > 0:
                    x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if x.shape[-2:] != size:  # odd input sizes: the strided levels do not halve exactly
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            total = total + x
        return self.classifier(self.dropout(total))


class FPTSegmentation(nn.Module):
    """ResNet + FPN (+ FPT) + semantic-FPN head: ``forward(images [B, 3, H, W]) -> logits [B, K, H, W]``.

    Args:
        num_classes: K (19 for Cityscapes).
        backbone: torchvision ResNet name; ``backbone_weights`` an ImageNet state dict file for it.
        fpt: build the FPT (False: the FPN baseline).
        fpt_placement: ``"backbone"`` (C2..C5 -> 1 x 1 laterals -> FPT, the paper's) or ``"fpn"``
            (FPN -> FPT); see ``BackboneWithFPT``.
        out_channels: FPN / FPT width; ``head_channels`` the head's (Panoptic FPN: 128).
        gt_window: None for the global GT, an odd side for the locality-constrained GT (LGT).
        frozen_bn, trainable_layers: see ``BackboneWithFPT``; segmentation trains BatchNorm by default.
        dropout: channel dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 19,
        backbone: str = "resnet50",
        fpt: bool = True,
        fpt_placement: str = "backbone",
        out_channels: int = 256,
        head_channels: int = 128,
        gt_window: int | None = None,
        backbone_weights: str | os.PathLike | None = None,
        frozen_bn: bool = False,
        trainable_layers: int = 5,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.backbone = BackboneWithFPT(
            backbone,
            out_channels,
            fpt=fpt,
            placement=fpt_placement,
            gt_window=gt_window,
            extra_pool=False,
            weights=backbone_weights,
            frozen_bn=frozen_bn,
            trainable_layers=trainable_layers,
        )
        self.head = SemanticFPNHead(out_channels, head_channels, num_classes, dropout=dropout)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.head(list(self.backbone(images).values()))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def _preset(backbone: str, fpt: bool, **defaults):
    def make(**overrides) -> nn.Module:
        args = require_backbone_weights({**defaults, **overrides}, backbone)
        return FPTSegmentation(backbone=backbone, fpt=fpt, **args)

    make.__doc__ = (
        f"Semantic segmentation, {backbone} + {'FPT' if fpt else 'FPN'} + semantic-FPN head; "
        f"arguments of FPTSegmentation override {defaults or 'nothing'}; ``backbone_weights`` is required "
        "(an ImageNet ResNet file, or ``scratch``)."
    )
    return make


# The CPU-sized presets: ResNet-18 from scratch, 64-channel pyramid, 32-channel head.
_TINY = dict(out_channels=64, head_channels=32)

SEGMENTATION_PRESETS = {
    "fpt_semseg_r50": _preset("resnet50", True, gt_window=5),
    "fpn_semseg_r50": _preset("resnet50", False),
    "fpt_semseg_r101": _preset("resnet101", True, gt_window=5),
    "fpn_semseg_r101": _preset("resnet101", False),
    "fpt_semseg_tiny": _preset("resnet18", True, gt_window=3, **_TINY),
    "fpn_semseg_tiny": _preset("resnet18", False, **_TINY),
}
