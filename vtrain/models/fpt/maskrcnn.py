"""Mask R-CNN / Faster R-CNN (torchvision's) on a ResNet pyramid with the FPT (the paper's instance-level
set-up, section 3.5 and the COCO experiments of section 4: the FPT's pyramid goes to the RPN and RoI heads).

The detectors are ``torchvision.models.detection.MaskRCNN`` / ``FasterRCNN`` with ``BackboneWithFPT`` as
backbone: ``model(images, targets)`` in training returns torchvision's loss dict; in eval it returns per
image ``{"boxes" [N, 4] xyxy pixels of the input image, "labels" [N], "scores" [N], "masks" [N, 1, H, W]}``.
Images are [3, H, W] floats in [0, 1]; the model resizes (``min_size`` / ``max_size``, ``test_min_size``)
and normalises them itself. Labels are category ids (0 is background), so COCO has ``num_classes = 91``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from vtrain.models.fpt.backbone import BackboneWithFPT, group_norm_layer, require_backbone_weights

# a random ResNet under the detection recipe's frozen BatchNorm and frozen conv1 + layer1 never trains them
_SCRATCH_NOTE = " (with model.frozen_bn=false model.trainable_layers=5, so that every stage trains)"


class TrainTestResize(GeneralizedRCNNTransform):
    """torchvision's detector transform with its own test scale: training draws the short side from
    ``min_size`` (multi-scale training, as Detectron's TRAIN.SCALES), evaluation resizes it to
    ``test_min_size`` (Detectron's TEST.SCALE) where torchvision would take ``min_size[-1]``."""

    def __init__(self, *args, test_min_size: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.test_min_size = int(test_min_size)

    def resize(self, image: torch.Tensor, target: dict | None = None):
        if self.training:
            return super().resize(image, target)
        train_sizes, self.min_size = self.min_size, (self.test_min_size,)
        try:
            return super().resize(image, target)
        finally:
            self.min_size = train_sizes


def build_rcnn(
    backbone: str = "resnet50",
    fpt: bool = True,
    masks: bool = True,
    num_classes: int = 91,
    out_channels: int = 256,
    fpt_placement: str = "backbone",
    gt_window: int | None = None,
    group_norm: bool = False,
    backbone_weights: str | os.PathLike | None = None,
    frozen_bn: bool = True,
    trainable_layers: int = 3,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    test_min_size: int | None = None,
    **detector_kwargs,
) -> nn.Module:
    """A torchvision Mask R-CNN (``masks``) or Faster R-CNN on ResNet + FPN, or ResNet + FPT.

    Args:
        backbone: torchvision ResNet name; ``backbone_weights`` an ImageNet state dict file for it.
        fpt: build the FPT (False: the FPN baseline).
        num_classes: category ids + 1 (background is 0).
        out_channels: pyramid width.
        fpt_placement: ``"backbone"`` (the paper's: C2..C5 -> 1 x 1 laterals -> FPT) or ``"fpn"``
            (FPN -> FPT); see ``BackboneWithFPT``.
        gt_window: None for the global GT, an odd side for the locality-constrained GT.
        group_norm: GroupNorm in the neck (FPN / laterals / FPT fusion) and the RoI heads: a 4conv1fc box
            head and a mask head of 4 convolutions, each conv + GN + ReLU (the released COCO config:
            FPN.USE_GN, ``roi_Xconv1fc_gn_head_fptnet``, ``mask_rcnn_fcn_head_v1up4convs_gn_adp_ff``);
            False: torchvision's heads (2 fc box head, 4 convolutions without normalisation).
        frozen_bn, trainable_layers: see ``BackboneWithFPT`` (torchvision's defaults: frozen, 3).
        min_size, max_size: the detector's resize of the short / long side; a sequence of short sides is
            multi-scale training (one drawn per image).
        test_min_size: the short side at evaluation; None: torchvision's (the last of ``min_size``).
        **detector_kwargs: any other ``MaskRCNN`` / ``FasterRCNN`` argument (``box_detections_per_img``...).
    """
    body = BackboneWithFPT(
        backbone,
        out_channels,
        fpt=fpt,
        placement=fpt_placement,
        gt_window=gt_window,
        weights=backbone_weights,
        frozen_bn=frozen_bn,
        trainable_layers=trainable_layers,
        group_norm=group_norm,
    )
    sizes = (int(min_size),) if isinstance(min_size, int) else tuple(int(size) for size in min_size)
    if group_norm:
        box_head = FastRCNNConvFCHead((out_channels, 7, 7), [256] * 4, [1024], norm_layer=group_norm_layer)
        detector_kwargs.setdefault("box_head", box_head)
        if masks:
            mask_head = MaskRCNNHeads(out_channels, [256] * 4, 1, norm_layer=group_norm_layer)
            detector_kwargs.setdefault("mask_head", mask_head)
    detector = MaskRCNN if masks else FasterRCNN
    model = detector(body, num_classes=num_classes, min_size=sizes, max_size=max_size, **detector_kwargs)
    if test_min_size is not None:
        transform = model.transform
        model.transform = TrainTestResize(
            sizes,
            max_size,
            transform.image_mean,
            transform.image_std,
            size_divisible=transform.size_divisible,
            fixed_size=transform.fixed_size,
            test_min_size=test_min_size,
        )
    return model


def _preset(backbone: str, fpt: bool, masks: bool, **defaults):
    def make(**overrides) -> nn.Module:
        args = {**defaults, **overrides}
        note = _SCRATCH_NOTE if args.get("frozen_bn", True) else ""  # build_rcnn's default: frozen
        args = require_backbone_weights(args, backbone, note)
        return build_rcnn(backbone, fpt, masks, **args)

    make.__doc__ = (
        f"{'Mask' if masks else 'Faster'} R-CNN, {backbone} + {'FPT' if fpt else 'FPN'}; "
        f"arguments of build_rcnn override {defaults or 'nothing'}; ``backbone_weights`` is required "
        "(an ImageNet ResNet file, or ``scratch``)."
    )
    return make


# The CPU-sized presets: ResNet-18 from scratch (trainable BatchNorm), 64-channel pyramid, small images,
# fewer proposals and sampled RoIs (a few objects per image).
_TINY = dict(
    out_channels=64,
    frozen_bn=False,
    trainable_layers=5,
    min_size=128,
    max_size=200,
    rpn_pre_nms_top_n_train=500,
    rpn_post_nms_top_n_train=250,
    rpn_pre_nms_top_n_test=250,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=128,
    box_detections_per_img=50,
)

RCNN_PRESETS = {
    "maskrcnn_r50": _preset("resnet50", False, True),
    "fpt_maskrcnn_r50": _preset("resnet50", True, True),
    "maskrcnn_r101": _preset("resnet101", False, True),
    "fpt_maskrcnn_r101": _preset("resnet101", True, True),
    "fasterrcnn_r50": _preset("resnet50", False, False),
    "fpt_fasterrcnn_r50": _preset("resnet50", True, False),
    "maskrcnn_tiny": _preset("resnet18", False, True, **_TINY),
    "fpt_maskrcnn_tiny": _preset("resnet18", True, True, **_TINY),
}
