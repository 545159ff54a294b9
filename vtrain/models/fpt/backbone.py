"""ResNet backbones with a feature pyramid shared by the instance-level (Mask R-CNN) and the semantic
segmentation models: ResNet C2..C5 -> FPN (the baseline), -> 1 x 1 laterals -> FPT (the paper's placement),
or -> FPN -> FPT. Module names follow torchvision's detection models (``body.layer1...``,
``fpn.inner_blocks...``), so torchvision Mask R-CNN / ResNet checkpoints load without renaming; the FPT sits
under ``fpt.`` and its laterals under ``lateral.``."""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.ops import Conv2dNormActivation, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from vtrain.checkpoint import fit_state_dict, read_state_dict
from vtrain.models.fpt.fpt import FeaturePyramidTransformer
from vtrain.models.pretrained import require_weights, torchvision_imagenet

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("layer1", "layer2", "layer3", "layer4")
# where the FPT takes its pyramid from: "backbone" (the paper's, and the released FPT_a.py: ResNet C2..C5
# through 1 x 1 lateral convolutions, no FPN top-down path) or "fpn" (after a full FPN)
PLACEMENTS = ("backbone", "fpn")


def group_norm_layer(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, eps 1e-5: Detectron's GROUP_NORM defaults (released
    lib/core/config.py:911-917), which the released COCO config turns on in the FPN and the heads."""
    return nn.GroupNorm(32, channels, eps=1e-5)


def require_backbone_weights(overrides: dict, name: str, scratch_note: str = "") -> dict:
    """``overrides`` of a preset on the ResNet ``name`` with ``backbone_weights`` checked: the presets start
    from an ImageNet ResNet file (required), or from a random one with ``"scratch"``."""
    weights = require_weights(
        overrides.get("backbone_weights"), "model.backbone_weights", torchvision_imagenet(name), scratch_note
    )
    return {**overrides, "backbone_weights": weights}


class BackboneWithFPT(nn.Module):
    """ResNet stages 2-5 -> a pyramid P2..P5 (plus P6 by max pooling when ``extra_pool``).

    Args:
        name: a torchvision ResNet (see ``RESNETS``).
        out_channels: pyramid width (256 in the paper).
        fpt: build the Feature Pyramid Transformer; False is the FPN baseline.
        placement: with the FPT, ``"backbone"`` (the paper's: 1 x 1 lateral convolutions on C2..C5, then the
            FPT, whose GT replaces FPN's top-down path) or ``"fpn"`` (the FPT after a full FPN).
        gt_window: None for the global GT, an odd side for the locality-constrained GT.
        extra_pool: add the "pool" level (P6 = max-pool of P5 with stride 2) that Mask R-CNN's RPN uses; with
            the FPT, P6 is pooled from the transformed P5 (the FPT transforms P2..P5, as in the paper).
        weights: a torchvision ImageNet ResNet state dict file to start from (``fc.`` keys ignored).
        frozen_bn: FrozenBatchNorm2d (the detection recipe with ImageNet weights); False: BatchNorm2d.
        trainable_layers: how many of the last stages (of conv1 + 4 stages) train, as torchvision's
            ``trainable_backbone_layers`` (5: everything).
        group_norm: GroupNorm (32 groups) after the FPN's, the laterals' and the FPT's fusion convolutions,
            which then have no bias (the released COCO config's FPN.USE_GN).

    ``forward(images [B, 3, H, W]) -> OrderedDict`` "0".."3" (strides 4..32) [+ "pool" (stride 64)], each
    [B, out_channels, ...]; ``out_channels`` is an attribute, as torchvision's detectors expect.
    """

    def __init__(
        self,
        name: str = "resnet50",
        out_channels: int = 256,
        fpt: bool = True,
        placement: str = "backbone",
        gt_window: int | None = None,
        extra_pool: bool = True,
        weights: str | os.PathLike | None = None,
        frozen_bn: bool = True,
        trainable_layers: int = 3,
        group_norm: bool = False,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(
                f"BackboneWithFPT: unknown ResNet {name!r}; expected one of {', '.join(RESNETS)}"
            )
        if placement not in PLACEMENTS:
            raise ValueError(
                f"BackboneWithFPT: model.fpt_placement must be one of {', '.join(PLACEMENTS)}, "
                f"found {placement!r}"
            )
        if not 0 <= trainable_layers <= 5:
            raise ValueError(f"BackboneWithFPT: trainable_layers must be in 0..5, found {trainable_layers}")
        resnet = getattr(torchvision.models, name)(
            weights=None, norm_layer=FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        )
        if weights is not None:
            state_dict = {
                k: v
                for k, v in read_state_dict(weights).items()
                if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
            }
            resnet.fc = nn.Identity()
            counters = frozenset(k for k in resnet.state_dict() if k.endswith("num_batches_tracked"))
            fit_state_dict(resnet, state_dict, weights, strict=True, allowed_missing=counters)
        trained = ("layer4", "layer3", "layer2", "layer1", "conv1")[:trainable_layers]
        trained += ("bn1",) if trainable_layers == 5 else ()
        for param_name, param in resnet.named_parameters():
            param.requires_grad_(param_name.startswith(trained))
        width = 64 if name in ("resnet18", "resnet34") else 256
        in_channels = [width * 2**i for i in range(4)]
        norm = group_norm_layer if group_norm else None
        self.body = IntermediateLayerGetter(resnet, {stage: str(i) for i, stage in enumerate(STAGES)})
        self.fpn = self.lateral = None
        if fpt and placement == "backbone":
            self.lateral = nn.ModuleList(
                Conv2dNormActivation(c, out_channels, 1, padding=0, norm_layer=norm, activation_layer=None)
                for c in in_channels
            )
        else:
            extra = LastLevelMaxPool() if extra_pool and not fpt else None  # with the FPT, P6 comes after it
            self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=extra, norm_layer=norm)
        self.out_channels, self.extra_pool, self.placement = out_channels, extra_pool, placement
        self.fpt = None
        if fpt:
            self.fpt = FeaturePyramidTransformer(out_channels, 4, gt_window=gt_window, norm_layer=norm)

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        stages = self.body(images)
        if self.lateral is not None:
            laterals = zip(self.lateral, stages.items(), strict=True)
            features = OrderedDict((key, conv(x)) for conv, (key, x) in laterals)
        else:
            features = self.fpn(stages)
        if self.fpt is None:
            return features
        out = OrderedDict(zip(features, self.fpt(list(features.values())), strict=True))
        if self.extra_pool:
            out["pool"] = F.max_pool2d(out[next(reversed(out))], 1, 2, 0)
        return out
