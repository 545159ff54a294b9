"""ResNet + FPN (+ FPT) backbones shared by the instance-level (Mask R-CNN) and the semantic segmentation
models. Module names follow torchvision's detection models (``body.layer1...``, ``fpn.inner_blocks...``), so
torchvision Mask R-CNN / ResNet checkpoints load without renaming; the FPT sits under ``fpt.``."""

from __future__ import annotations

import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from vtrain.checkpoint import fit_state_dict, read_state_dict
from vtrain.models.fpt.fpt import FeaturePyramidTransformer
from vtrain.models.pretrained import require_weights, torchvision_imagenet

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
STAGES = ("layer1", "layer2", "layer3", "layer4")


def require_backbone_weights(overrides: dict, name: str, scratch_note: str = "") -> dict:
    """``overrides`` of a preset on the ResNet ``name`` with ``backbone_weights`` checked: the presets start
    from an ImageNet ResNet file (required), or from a random one with ``"scratch"``."""
    weights = require_weights(
        overrides.get("backbone_weights"), "model.backbone_weights", torchvision_imagenet(name), scratch_note
    )
    return {**overrides, "backbone_weights": weights}


class BackboneWithFPT(nn.Module):
    """ResNet stages 2-5 -> FPN (P2..P5, plus P6 by max pooling when ``extra_pool``) -> optional FPT.

    Args:
        name: a torchvision ResNet (see ``RESNETS``).
        out_channels: FPN / FPT width (256 in the paper).
        fpt: insert the Feature Pyramid Transformer after the FPN; False is the FPN baseline.
        gt_window: None for the global GT, an odd side for the locality-constrained GT.
        extra_pool: add the "pool" level (P6 = max-pool of P5 with stride 2) that Mask R-CNN's RPN uses; with
            the FPT, P6 is pooled from the transformed P5 (the FPT transforms P2..P5, as in the paper).
        weights: a torchvision ImageNet ResNet state dict file to start from (``fc.`` keys ignored).
        frozen_bn: FrozenBatchNorm2d (the detection recipe with ImageNet weights); False: BatchNorm2d.
        trainable_layers: how many of the last stages (of conv1 + 4 stages) train, as torchvision's
            ``trainable_backbone_layers`` (5: everything).

    ``forward(images [B, 3, H, W]) -> OrderedDict`` "0".."3" (strides 4..32) [+ "pool" (stride 64)], each
    [B, out_channels, ...]; ``out_channels`` is an attribute, as torchvision's detectors expect.
    """

    def __init__(
        self,
        name: str = "resnet50",
        out_channels: int = 256,
        fpt: bool = True,
        gt_window: int | None = None,
        extra_pool: bool = True,
        weights: str | os.PathLike | None = None,
        frozen_bn: bool = True,
        trainable_layers: int = 3,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(
                f"BackboneWithFPT: unknown ResNet {name!r}; expected one of {', '.join(RESNETS)}"
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
        with_fpn = BackboneWithFPN(
            resnet,
            return_layers={stage: str(i) for i, stage in enumerate(STAGES)},
            in_channels_list=[width * 2**i for i in range(4)],
            out_channels=out_channels,
            extra_blocks=LastLevelMaxPool(),
        )
        self.body, self.fpn = with_fpn.body, with_fpn.fpn
        if not extra_pool:  # BackboneWithFPN adds the max-pool level whatever it is given
            self.fpn.extra_blocks = None
        self.out_channels, self.extra_pool = out_channels, extra_pool
        self.fpt = FeaturePyramidTransformer(out_channels, 4, gt_window=gt_window) if fpt else None

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.fpn(self.body(images))
        if self.fpt is None:
            return features
        levels = [key for key in features if key != "pool"]
        out = OrderedDict(zip(levels, self.fpt([features[key] for key in levels]), strict=True))
        if self.extra_pool:
            out["pool"] = F.max_pool2d(out[levels[-1]], 1, 2, 0)
        return out
